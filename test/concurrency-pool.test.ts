import { Queue, Worker } from 'bullmq';
import { Redis } from 'ioredis';
import { afterAll, describe, expect, it, vi } from 'vitest';
import { createConcurrencyPool } from '../src/workers/concurrency-pool.js';
import { randomPrefix, redisUrl } from './helpers/env.js';
import { POLL } from './helpers/wait.js';

/** A job body the test ends by hand: `gate.open()` lets every started job finish. */
function gated() {
  let open!: () => void;
  const opened = new Promise<void>((resolve) => (open = resolve));
  return { open: () => open(), opened };
}

describe('concurrency pool: one process-wide concurrency over several BullMQ workers', () => {
  it('runs at most `limit` bodies at once, lends free slots to any member and gives them back', async () => {
    const pool = createConcurrencyPool(3);
    const a = pool.member();
    const b = pool.member();
    const wa = { concurrency: 0 };
    const wb = { concurrency: 0 };
    a.attach(wa);
    b.attach(wb);
    // Idle: each worker may fetch up to every slot.
    expect([wa.concurrency, wb.concurrency]).toEqual([3, 3]);
    const gate = gated();
    let running = 0;
    let peak = 0;
    const body = async () => {
      running++;
      peak = Math.max(peak, running);
      await gate.opened;
      running--;
    };
    const runA = a.wrap(body);
    const runB = b.wrap(body);
    // BullMQ passes the abort signal only to a processor that declares three parameters.
    expect(runA.length).toBe(3);
    const done = [runA(1), runA(2), runB(3), runB(4)];
    await vi.waitFor(() => expect(pool.stats()).toEqual({ running: 3, waiting: 1 }), POLL);
    // Full: a worker may only hold what it runs (BullMQ's minimum is 1).
    expect([wa.concurrency, wb.concurrency]).toEqual([2, 2]);
    expect(running).toBe(3);
    gate.open();
    await Promise.all(done);
    expect(peak).toBe(3);
    expect(pool.stats()).toEqual({ running: 0, waiting: 0 });
    expect([wa.concurrency, wb.concurrency]).toEqual([3, 3]);
    b.leave();
    wa.concurrency = 0;
    await a.wrap(async () => undefined)(0);
    expect(wa.concurrency).toBe(3);
  });

  it('a body given a free slot starts in the same tick (no wait for a slot that is there)', async () => {
    const pool = createConcurrencyPool(1);
    const m = pool.member();
    m.attach({ concurrency: 0 });
    const gate = gated();
    let started = 0;
    const run = m.wrap(async () => {
      started++;
      await gate.opened;
      return 'ok';
    });
    const first = run('job');
    expect(started).toBe(1);
    // The pool is full: the next one waits until the first gives its slot back.
    const second = run('job');
    expect(started).toBe(1);
    gate.open();
    expect(await first).toBe('ok');
    expect(await second).toBe('ok');
    expect(started).toBe(2);
    expect(pool.stats()).toEqual({ running: 0, waiting: 0 });
  });

  it('a body that throws gives its slot back', async () => {
    const pool = createConcurrencyPool(1);
    const m = pool.member();
    await expect(m.wrap(async () => Promise.reject(new Error('boom')))(0)).rejects.toThrow('boom');
    await expect(m.wrap(async () => 7)(0)).resolves.toBe(7);
    expect(pool.stats()).toEqual({ running: 0, waiting: 0 });
  });

  describe('on real BullMQ workers of two queues (two shards)', () => {
    const connections: Redis[] = [];
    const closers: Array<() => Promise<void>> = [];
    afterAll(async () => {
      for (const close of closers) await close();
      for (const c of connections) c.disconnect();
    });

    it('never runs more than the limit across both, and drains both queues', async () => {
      const limit = 4;
      const pool = createConcurrencyPool(limit);
      let running = 0;
      let peak = 0;
      const seen = { a: 0, b: 0 };
      const queues = ['a', 'b'] as const;
      const perQueue = 15;
      for (const name of queues) {
        const prefix = randomPrefix();
        const connection = new Redis(redisUrl(), { maxRetriesPerRequest: null });
        connections.push(connection);
        const queue = new Queue('pool-test', { connection, prefix });
        await queue.addBulk(Array.from({ length: perQueue }, (_, i) => ({ name: 'j', data: { i } })));
        const member = pool.member();
        const worker = new Worker(
          'pool-test',
          member.wrap(async () => {
            running++;
            peak = Math.max(peak, running);
            seen[name]++;
            // Yield to the event loop a few times so bodies overlap without a timed sleep.
            for (let i = 0; i < 20; i++) await new Promise((r) => setImmediate(r));
            running--;
          }),
          { connection: new Redis(redisUrl(), { maxRetriesPerRequest: null }), prefix, concurrency: limit },
        );
        member.attach(worker);
        closers.push(async () => {
          await worker.close();
          member.leave();
          await queue.obliterate({ force: true });
          await queue.close();
        });
      }
      await vi.waitFor(() => expect(seen).toEqual({ a: perQueue, b: perQueue }), POLL);
      expect(peak).toBeGreaterThan(1);
      expect(peak).toBeLessThanOrEqual(limit);
    });
  });
});
