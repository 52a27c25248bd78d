/** Failed reason of a job cancelled while active; the API shows such jobs as state "cancelled". */
export const CANCELLED_REASON = 'cancelled';

/** Pub/sub channel on which the API asks whichever worker holds a job to abort it. */
export const cancelChannel = (prefix: string) => `${prefix}:agentq:cancel`;

/** Tombstone of a job removed before it ran, so GET still answers "cancelled" for a while. */
export const cancelledKey = (prefix: string, id: string) => `${prefix}:agentq:cancelled:${id}`;
