import { Redis } from 'ioredis';
import { afterEach, describe, expect, it } from 'vitest';
import { parseConfig } from '../src/shared/core/config.js';
import { AUTO_PIPELINING_OFF_AT, AUTO_PIPELINING_ON_AT, createAutoPipelining } from '../src/shared/infra/redis/auto-pipelining.js';
import { createRedis } from '../src/shared/infra/redis/connection.js';
import { createConcurrencyPool } from '../src/workers/concurrency-pool.js';
import { randomPrefix, redisUrl } from './helpers/env.js';

const clients: Redis[] = [];
afterEach(() => {
  for (const c of clients.splice(0)) c.disconnect();
});

/** A worker command connection as the runtime makes one, following `p`. */
function connection(p: ReturnType<typeof createAutoPipelining>): Redis {
  const c = p.follow(createRedis(redisUrl(), 'worker', { enableAutoPipelining: p.enabled }) as Redis);
  clients.push(c);
  return c;
}

/** Whether a command sent now is auto-pipelined (queued for the next check phase) rather than written at once. */
async function pipelines(c: Redis): Promise<boolean> {
  const key = `${randomPrefix()}probe`;
  const reply = c.set(key, '1');
  const queued = (c as unknown as { _autoPipelines: Map<string, unknown> })._autoPipelines.size > 0;
  await reply;
  return queued;
}

describe('REDIS_AUTO_PIPELINING: a worker\'s command connections auto-pipeline by its jobs in flight', () => {
  it('auto: off until 16 jobs are in flight, on down to 9, off again at 8 (not by the configured concurrency)', async () => {
    expect([AUTO_PIPELINING_ON_AT, AUTO_PIPELINING_OFF_AT]).toEqual([16, 8]);
    expect(parseConfig({}).REDIS_AUTO_PIPELINING).toBe('auto');
    const p = createAutoPipelining('auto');
    const c = connection(p);
    expect(p.enabled).toBe(false);
    expect(await pipelines(c)).toBe(false);
    p.inFlight(15);
    expect(await pipelines(c)).toBe(false);
    p.inFlight(16);
    expect(p.enabled).toBe(true);
    expect(await pipelines(c)).toBe(true);
    // A connection made now starts as the switch stands.
    const later = connection(p);
    expect(await pipelines(later)).toBe(true);
    p.inFlight(9);
    expect(await pipelines(c)).toBe(true);
    p.inFlight(8);
    expect(p.enabled).toBe(false);
    expect([await pipelines(c), await pipelines(later)]).toEqual([false, false]);
    p.inFlight(12);
    expect(await pipelines(c)).toBe(false);
  });

  it('on and off hold still whatever the jobs in flight', async () => {
    const on = createAutoPipelining('on');
    const off = createAutoPipelining('off');
    const [a, b] = [connection(on), connection(off)];
    for (const jobs of [0, 50, 0]) {
      on.inFlight(jobs);
      off.inFlight(jobs);
      expect([await pipelines(a), await pipelines(b)]).toEqual([true, false]);
    }
  });

  it('switches off only once no auto-pipeline waits to be sent: the commands keep their order', async () => {
    const p = createAutoPipelining('auto');
    const c = connection(p);
    p.inFlight(20);
    const key = `${randomPrefix()}n`;
    const first = c.incr(key);
    // Still queued: a command written directly now would overtake it.
    p.inFlight(0);
    expect(p.enabled).toBe(false);
    const second = c.incr(key);
    expect(await Promise.all([first, second])).toEqual([1, 2]);
    expect(c.options.enableAutoPipelining).toBe(true);
    // The next job's entry or exit finds nothing queued: off.
    p.inFlight(1);
    expect(await pipelines(c)).toBe(false);
    expect(await c.incr(key)).toBe(3);
  });

  it('the concurrency pool reports the jobs in its processors as they enter and leave', async () => {
    const seen: number[] = [];
    const pool = createConcurrencyPool(2, (jobs) => seen.push(jobs));
    const m = pool.member();
    m.attach({ concurrency: 0 });
    seen.length = 0;
    m.enter();
    m.enter();
    const waiting = m.enter();
    expect(waiting).toBeInstanceOf(Promise);
    m.exit();
    await waiting;
    m.exit();
    m.exit();
    expect(seen).toEqual([1, 2, 3, 2, 1, 0]);
  });
});
