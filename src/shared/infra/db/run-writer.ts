import type { AgentRun } from './agent-runs.js';

/**
 * Group commit for `agent_runs`: while one INSERT is in flight, rows of other attempts queue up and go
 * together in the next one. A lone attempt waits for nothing (its INSERT starts at once), and every caller
 * still gets its promise only once its row is committed, so a job is never acknowledged before its usage
 * row is durable. Under concurrency, N attempts cost one round trip and one commit instead of N.
 */
export function createRunWriter(
  store: { recordMany(runs: AgentRun[]): Promise<number> },
  opts: {
    maxBatch?: number;
    /** Per committed row: ms from `record` (the attempt's end) to its commit, queueing behind a batch included. */
    onCommitted?: (lagMs: number) => void;
  } = {},
) {
  const maxBatch = opts.maxBatch ?? 500;
  let queue: Array<{ run: AgentRun; at: number; resolve: () => void; reject: (err: unknown) => void }> = [];
  let inFlight = false;

  async function drain(): Promise<void> {
    inFlight = true;
    while (queue.length > 0) {
      const batch = queue.slice(0, maxBatch);
      queue = queue.slice(batch.length);
      try {
        await store.recordMany(batch.map((b) => b.run));
        const now = performance.now();
        for (const b of batch) {
          opts.onCommitted?.(now - b.at);
          b.resolve();
        }
      } catch (err) {
        for (const b of batch) b.reject(err);
      }
    }
    inFlight = false;
  }

  return {
    record(run: AgentRun): Promise<void> {
      return new Promise<void>((resolve, reject) => {
        queue.push({ run, at: performance.now(), resolve, reject });
        if (!inFlight) void drain();
      });
    },
  };
}
