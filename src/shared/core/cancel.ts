/** Failed reason of a job cancelled while active; the API shows such jobs as state "cancelled". */
export const CANCELLED_REASON = 'cancelled';

export { cancelChannel, cancelledKey, cancelRequestedKey, flowCancelledKey } from './queue-keys.js';

/** The state a reader is shown: a job (or flow) that failed because it was cancelled is "cancelled". */
export const shownState = (state: string, failedReason: string | undefined) => (state === 'failed' && failedReason === CANCELLED_REASON ? 'cancelled' : state);
