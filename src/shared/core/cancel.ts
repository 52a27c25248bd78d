/** Failed reason of a job cancelled while active; the API shows such jobs as state "cancelled". */
export const CANCELLED_REASON = 'cancelled';

export { cancelChannel, cancelledKey, cancelRequestedKey, flowCancelledKey } from './queue-keys.js';

/**
 * The cancel channel's message: the job's id and its creation time, so that a worker aborts an attempt of the job the
 * API cancelled only, never one of a job made under the id since (the one read removed, its idempotency key sent
 * again). `<ts>:<id>`: none of our ids has a colon (UUIDs, `idem-<hash>`, `<run>-<step>`; BullMQ refuses one in a
 * custom id but for its legacy three-part repeat ids), so an older API's message, the id alone (a rolling upgrade,
 * which upgrades the workers first: README, `DELETE /v1/jobs/:id`), reads as such.
 */
export const cancelMessage = (id: string, ts: number) => `${ts}:${id}`;

/** The job a cancel message names; `ts` missing for an older API's (the id only): any attempt of the id. */
export function parseCancelMessage(message: string): { id: string; ts?: number } {
  const m = /^(\d+):(.+)$/s.exec(message);
  return m ? { id: m[2]!, ts: Number(m[1]) } : { id: message };
}

/**
 * The state a reader is shown for a job (or flow) BullMQ reads as `state`: one cancelled while it ran is failed
 * with CANCELLED_REASON, shown "cancelled". The job view, a flow's children and an idempotent re-send's answer all
 * decide it here.
 */
export const shownState = (state: string, failedReason: string | undefined) => (state === 'failed' && failedReason === CANCELLED_REASON ? 'cancelled' : state);
