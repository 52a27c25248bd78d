import type { Job } from 'bullmq';
import type { AgentResult } from '../core/types.js';

export type ChildOutcome = { state: 'completed'; result: AgentResult } | { state: 'failed'; error: string };

/**
 * How a parent's children ended, read from the parent itself: BullMQ writes a child's return value (or,
 * with `ignoreDependencyOnFailure`, its failure) into the parent's hashes atomically as the child finishes,
 * so this stays correct after the child job itself has been removed by retention.
 */
export async function childOutcomes(parent: Job, childQueueKey: string): Promise<Map<string, ChildOutcome>> {
  const [values, failures] = await Promise.all([parent.getChildrenValues<AgentResult>(), parent.getIgnoredChildrenFailures()]);
  const out = new Map<string, ChildOutcome>();
  const idOf = (key: string) => (key.startsWith(`${childQueueKey}:`) ? key.slice(childQueueKey.length + 1) : undefined);
  for (const [key, error] of Object.entries(failures ?? {})) {
    const id = idOf(key);
    if (id) out.set(id, { state: 'failed', error: String(error) });
  }
  for (const [key, result] of Object.entries(values ?? {})) {
    const id = idOf(key);
    if (id) out.set(id, { state: 'completed', result });
  }
  return out;
}
