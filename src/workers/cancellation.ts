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
