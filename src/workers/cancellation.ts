import { CANCELLED_REASON } from '../shared/core/cancel.js';

/**
 * How one attempt learns that its job was cancelled while it ran. The worker makes one per job it takes and
 * cancels it when the API's cancel message names the job. The AbortSignal that the guards and the model call
 * honour is made only when something first reads it (an attempt answered from memory never does), already
 * aborted when the cancel came first. BullMQ's own per-job signal is not asked for: it would cost every job
 * an AbortController and the processor a listener relaying it to this one.
 */
export class Cancellation {
  private controller: AbortController | undefined;
  private requested = false;

  /** `jobTs`: the creation time (BullMQ's `timestamp`) of the job whose attempt this is: which job of the id. */
  constructor(readonly jobTs?: number) {}

  get cancelled(): boolean {
    return this.requested;
  }

  get signal(): AbortSignal {
    if (!this.controller) {
      this.controller = new AbortController();
      if (this.requested) this.controller.abort(new Error(CANCELLED_REASON));
    }
    return this.controller.signal;
  }

  cancel(): void {
    if (this.requested) return;
    this.requested = true;
    this.controller?.abort(new Error(CANCELLED_REASON));
  }
}

/**
 * The attempts running in one worker, by job id, so that a cancel reaches every one of them. Usually one per job;
 * two after a stall: BullMQ's stalled check hands back a job whose lock lapsed while its attempt still ran (the
 * worker's event loop was blocked), and this worker may fetch it again while that first attempt runs on (its
 * outcome will be refused, but until it ends it calls the model). Kept for as long as each attempt's processor runs.
 */
export function createCancellations() {
  // The one attempt of a job as it is (the usual case), a Set only once a second attempt of it runs here: a Set
  // per job was most of what this allocated per job.
  const running = new Map<string, Cancellation | Set<Cancellation>>();
  const remove = (jobId: string, cancel: Cancellation) => {
    const held = running.get(jobId);
    if (held === cancel) running.delete(jobId);
    else if (held instanceof Set && held.delete(cancel) && held.size === 0) running.delete(jobId);
  };
  /** An attempt of the job starts: its cancellation, tracked until `end`. */
  const start = (jobId: string, jobTs: number): Cancellation => {
    const cancel = new Cancellation(jobTs);
    const held = running.get(jobId);
    if (!held) running.set(jobId, cancel);
    else if (held instanceof Set) held.add(cancel);
    else running.set(jobId, new Set([held, cancel]));
    return cancel;
  };
  return {
    /**
     * An attempt's tracking in two halves, for the caller's own async function around the attempt (the agent worker):
     * `start` as the attempt begins, `end` once it has settled, however.
     */
    start,
    end: remove,
    /**
     * Cancels every attempt of the job running here; how many it cancelled (not cancelled before). `jobTs`: the
     * job's creation time as the API read it: an attempt of another job of the id (the one cancelled removed and a
     * new one made under its id before the message went out) runs on. Without it (an older API's message, the id
     * alone, during a rolling upgrade) every attempt of the id, as before.
     */
    cancel(jobId: string, jobTs?: number): number {
      const held = running.get(jobId);
      let n = 0;
      for (const cancel of held instanceof Set ? held : held ? [held] : []) {
        if (cancel.cancelled || (jobTs !== undefined && cancel.jobTs !== jobTs)) continue;
        cancel.cancel();
        n++;
      }
      return n;
    },
  };
}
