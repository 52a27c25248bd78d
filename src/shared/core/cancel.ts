/** Failed reason of a job cancelled while active; the API shows such jobs as state "cancelled". */
export const CANCELLED_REASON = 'cancelled';

export { cancelChannel, cancelledKey, cancelRequestedKey } from './queue-keys.js';
