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
  // Each attempt with its job's creation time (BullMQ's `timestamp`): which job of the id it runs.
  const running = new Map<string, Map<Cancellation, number>>();
  return {
    async run<R>(jobId: string, jobTs: number, attempt: (cancel: Cancellation) => Promise<R>): Promise<R> {
      const cancel = new Cancellation();
      let attempts = running.get(jobId);
      if (!attempts) running.set(jobId, (attempts = new Map()));
      attempts.set(cancel, jobTs);
      try {
        return await attempt(cancel);
      } finally {
        attempts.delete(cancel);
        if (attempts.size === 0 && running.get(jobId) === attempts) running.delete(jobId);
      }
    },
    /**
     * Cancels every attempt of the job running here; how many it cancelled (not cancelled before). `jobTs`: the
     * job's creation time as the API read it: an attempt of another job of the id (the one cancelled removed and a
     * new one made under its id before the message went out) runs on. Without it (an older API's message, the id
     * alone, during a rolling upgrade) every attempt of the id, as before.
     */
    cancel(jobId: string, jobTs?: number): number {
      let n = 0;
      for (const [cancel, ts] of running.get(jobId) ?? []) {
        if (cancel.cancelled || (jobTs !== undefined && ts !== jobTs)) continue;
        cancel.cancel();
        n++;
      }
      return n;
    },
  };
}
