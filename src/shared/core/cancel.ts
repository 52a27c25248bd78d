/** Failed reason of a job cancelled while active; the API shows such jobs as state "cancelled". */
export const CANCELLED_REASON = 'cancelled';

export { cancelChannel, cancelledKey, cancelRequestedKey, flowCancelledKey } from './queue-keys.js';

/**
 * The state a reader is shown for a job (or flow) BullMQ reads as `state`: one cancelled while it ran is failed
 * with CANCELLED_REASON, shown "cancelled". The job view, a flow's children and an idempotent re-send's answer all
 * decide it here.
 */
export const shownState = (state: string, failedReason: string | undefined) => (state === 'failed' && failedReason === CANCELLED_REASON ? 'cancelled' : state);
