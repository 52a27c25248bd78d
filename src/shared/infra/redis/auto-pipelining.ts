import type { Config } from '../../core/config.js';
import type { RedisClient } from './connection.js';

/**
 * REDIS_AUTO_PIPELINING `auto`: a worker process's command connections auto-pipeline while it has this many jobs
 * in flight or more, and stop again at AUTO_PIPELINING_OFF_AT or fewer (the gap keeps a load near one edge from
 * switching at every job). ioredis defers an auto-pipelined command to the loop's next check phase and sends it in
 * a pipeline it builds for that tick (copying every script defined on the client into it): with several jobs'
 * commands in one tick that is one write for all; with one it is pure overhead. Measured (scratch, sequential
 * callers of a 2-key script, 25 scripts defined, per call): 1 caller 73.7 us of CPU with it, 30.9 without; 8
 * callers 25.4 vs 14.7; 16 callers 16.8 vs 23.2; 50 callers 8.8 vs 17.7. The count is of jobs in flight, not the
 * configured concurrency: a c=50 worker at half its maximum load has ~11-14 jobs in flight, most of them waiting
 * on the model, and its pipelines carried about one command each.
 */
export const AUTO_PIPELINING_ON_AT = 16;
export const AUTO_PIPELINING_OFF_AT = 8;

export interface AutoPipelining {
  /** Whether a connection made now should auto-pipeline (its `enableAutoPipelining` option). */
  readonly enabled: boolean;
  /** Makes `client`'s auto-pipelining follow this switch from now on; returns it. */
  follow<C extends RedisClient>(client: C): C;
  /** The process's jobs in flight now (the concurrency pool's count, at every job's entry and exit). */
  inFlight(jobs: number): void;
}

/** ioredis 5's queue of auto-pipelines not sent yet (Redis and Cluster alike; not public API, as in lua.ts). */
const unsent = (client: RedisClient): number => (client as unknown as { _autoPipelines?: Map<string, unknown> })._autoPipelines?.size ?? 0;

/**
 * One switch per worker process for the connections its jobs' commands go out on (guards, fair dispatcher, usage
 * rows). `on` / `off` hold it still; `auto` follows the jobs in flight (see AUTO_PIPELINING_ON_AT). ioredis reads
 * the option at every command, so a connection switches between two commands.
 */
export function createAutoPipelining(mode: Config['REDIS_AUTO_PIPELINING']): AutoPipelining {
  const clients: RedisClient[] = [];
  let want = mode === 'on';
  /** Every client follows `want` already: the usual call checks nothing else. */
  let settled = true;

  const apply = () => {
    settled = true;
    for (const c of clients) {
      if (Boolean(c.options.enableAutoPipelining) === want) continue;
      // Off only once no auto-pipeline waits to be sent: a command sent directly now would leave before the
      // commands queued in it earlier. Tried again at the next job's entry or exit.
      if (!want && unsent(c) > 0) {
        settled = false;
        continue;
      }
      c.options.enableAutoPipelining = want;
    }
  };

  return {
    get enabled() {
      return want;
    },
    follow(client) {
      clients.push(client);
      client.options.enableAutoPipelining = want;
      return client;
    },
    inFlight(jobs) {
      if (mode !== 'auto') return;
      if (!want && jobs >= AUTO_PIPELINING_ON_AT) {
        want = true;
        apply();
      } else if (want && jobs <= AUTO_PIPELINING_OFF_AT) {
        want = false;
        apply();
      } else if (!settled) apply();
    },
  };
}
