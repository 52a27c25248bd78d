import { randomUUID } from 'node:crypto';
import { connect } from 'node:net';
import { expect, vi } from 'vitest';
import { POLL } from './wait.js';
import { Queue, QueueEvents } from 'bullmq';
import { Redis } from 'ioredis';
import { QUEUE } from '../../src/shared/core/queue-names.js';
import type { Stack } from './stack.js';
import { createFairScheduler, type FairScheduler, type FairSchedulerOptions } from '../../src/shared/fair/fair-scheduler.js';

/** One QueueEvents event of the agent queue, in the order Redis wrote them (one stream: a total order). */
export interface QueueEvent {
  event: string;
  jobId: string;
}

const EVENTS = ['added', 'delayed', 'waiting', 'active', 'completed', 'failed', 'stalled', 'retries-exhausted', 'removed'] as const;

/**
 * Records every event of the agent queue in stream order, so a test can count what happened between two
 * events ("A's completions between B's enqueue and B's start") without looking at any clock.
 */
export async function recordEvents(s: Pick<Stack, 'cfg'>): Promise<{
  events: QueueEvent[];
  /** Resolves with the index of the first event (at or after `from`) matching. */
  waitFor(pred: (e: QueueEvent) => boolean, opts?: { from?: number; timeoutMs?: number }): Promise<number>;
  on(listener: (e: QueueEvent, index: number) => void): void;
  close(): Promise<void>;
}> {
  const connection = new Redis(s.cfg.REDIS_URL, { maxRetriesPerRequest: null });
  // Read from the stream's current end, fixed now (QueueEvents' default '$' is taken whenever its first XREAD runs).
  const last = await connection.xrevrange(`${s.cfg.QUEUE_PREFIX}:${QUEUE.agent}:events`, '+', '-', 'COUNT', 1);
  const qe = new QueueEvents(QUEUE.agent, { connection, prefix: s.cfg.QUEUE_PREFIX, lastEventId: last[0]?.[0] ?? '0-0' });
  const events: QueueEvent[] = [];
  const listeners: Array<(e: QueueEvent, index: number) => void> = [];
  for (const name of EVENTS) {
    qe.on(name as 'added', (args: { jobId: string }) => {
      const e = { event: name, jobId: args.jobId };
      events.push(e);
      for (const l of listeners) l(e, events.length - 1);
    });
  }
  await qe.waitUntilReady();
  return {
    events,
    on: (l) => void listeners.push(l),
    waitFor(pred, opts = {}) {
      const from = opts.from ?? 0;
      const found = events.findIndex((e, i) => i >= from && pred(e));
      if (found >= 0) return Promise.resolve(found);
      return new Promise((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error(`queue event not seen within ${opts.timeoutMs ?? 60_000} ms`)), opts.timeoutMs ?? 60_000);
        listeners.push((e, i) => {
          if (i >= from && pred(e)) {
            clearTimeout(timer);
            resolve(i);
          }
        });
      });
    },
    async close() {
      await qe.close();
      connection.disconnect();
    },
  };
}

/** A queue handle of its own (test-side reads never share the stack's connections). */
export function openQueue(s: Pick<Stack, 'cfg'>): Queue {
  return new Queue(QUEUE.agent, { connection: { url: s.cfg.REDIS_URL }, prefix: s.cfg.QUEUE_PREFIX });
}

/** Active jobs per org right now (BullMQ's view: what workers are running). */
export async function activeByOrg(queue: Queue): Promise<Map<string, number>> {
  const jobs = await queue.getActive(0, 1000);
  const out = new Map<string, number>();
  for (const j of jobs) if (j?.data?.orgId) out.set(j.data.orgId, (out.get(j.data.orgId) ?? 0) + 1);
  return out;
}

/**
 * Samples a value in a loop until stopped, keeping the maximum and every sample: used for "never above"
 * assertions (sampling can miss a short excursion, never invent one).
 */
export function sampler(read: () => Promise<number>, everyMs = 20) {
  let max = 0;
  let samples = 0;
  let stopped = false;
  const values: number[] = [];
  const done = (async () => {
    while (!stopped) {
      try {
        const v = await read();
        values.push(v);
        samples++;
        if (v > max) max = v;
      } catch {
        // A read racing a killed process or a closing connection: skip it.
      }
      await new Promise((r) => setTimeout(r, everyMs));
    }
  })();
  return {
    get max() {
      return max;
    },
    get samples() {
      return samples;
    },
    values,
    async stop() {
      stopped = true;
      await done;
      return { max, samples };
    },
  };
}

/** Redis's own clock in ms (the dispatcher's time base). */
export async function redisNow(redis: Redis): Promise<number> {
  const [s, us] = await redis.time();
  return Number(s) * 1000 + Math.floor(Number(us) / 1000);
}

/** total_commands_processed of a Redis server (INFO stats). */
export async function commandsProcessed(redis: Redis): Promise<number> {
  const info = await redis.info('stats');
  const m = /total_commands_processed:(\d+)/.exec(info);
  if (!m) throw new Error('no total_commands_processed in INFO stats');
  return Number(m[1]);
}

/** Jain's fairness index of a set of allocations: 1 when all equal, 1/n when one takes all. */
export function jain(xs: number[]): number {
  const sum = xs.reduce((a, b) => a + b, 0);
  const sq = xs.reduce((a, b) => a + b * b, 0);
  return (sum * sum) / (xs.length * sq);
}

/** A job request whose prompt carries `marker` (emulator faults target it), on the fast model unless told. */
export const markedJob = (marker: string, model?: string) => ({
  agent: 'RiskAnalyzer',
  action: 'analyze_risks',
  input: { startup: { name: `${marker} Co`, industry: 'logistics' } },
  ...(model ? { options: { model } } : {}),
});

/** Posts jobs in bulk for the key's org (in chunks the API accepts); returns the ids in enqueue order. */
export async function postBulk(s: Stack, key: string, jobs: unknown[]): Promise<string[]> {
  const ids: string[] = [];
  for (let i = 0; i < jobs.length; i += 500) {
    const res = await s.app.inject({ method: 'POST', url: '/v1/jobs/bulk', headers: { authorization: `Bearer ${key}` }, payload: { jobs: jobs.slice(i, i + 500) } });
    if (res.statusCode !== 202) throw new Error(`bulk enqueue answered ${res.statusCode}: ${res.body}`);
    ids.push(...(res.json().jobs as Array<{ id: string }>).map((j) => j.id));
  }
  return ids;
}

export async function postJob(s: Stack, key: string, job: object): Promise<string> {
  const res = await s.app.inject({ method: 'POST', url: '/v1/jobs', headers: { authorization: `Bearer ${key}` }, payload: job });
  if (res.statusCode !== 202) throw new Error(`enqueue answered ${res.statusCode}: ${res.body}`);
  return res.json().id as string;
}

/**
 * A fresh org capped at one job, its slot held by a job whose model call hangs (until the test cancels `busy`): the
 * org's next job waits parked in its lane. Resolves once the held call reached the emulator.
 */
export async function orgWithHeldSlot(s: Stack): Promise<{ org: string; key: string; busy: string }> {
  const org = `org-held-${randomUUID().slice(0, 8)}`;
  await s.runtime.deps.cells[0].scheduler.setPlan(org, { concurrency: 1 });
  const key = await s.newKey(org);
  const marker = `Slot Holder ${randomUUID().slice(0, 8)}`;
  const hangs = () => s.emulator.calls().filter((c) => c.fault === 'hang').length;
  const before = hangs();
  s.emulator.script({ hang: true, match: { promptIncludes: marker } });
  const busy = await postJob(s, key, markedJob(marker));
  await vi.waitFor(() => expect(hangs()).toBe(before + 1), POLL);
  return { org, key, busy };
}

/** PUT /admin/orgs/:org/plan with the operator token. */
export async function putPlan(s: Stack, org: string, plan: Record<string, number | null>) {
  const res = await s.app.inject({ method: 'PUT', url: `/admin/orgs/${org}/plan`, headers: { authorization: `Bearer ${s.cfg.ADMIN_TOKEN}` }, payload: plan });
  if (res.statusCode !== 200) throw new Error(`plan change answered ${res.statusCode}: ${res.body}`);
  return res.json() as { org: string; own: Record<string, number>; effective: Record<string, unknown>; waiting: number; inFlight: number };
}

/**
 * Redis MONITOR over a plain socket (each line: one command, those run by scripts included), calling
 * `onLine` with its text. ioredis' own monitor() can mix monitor output into its command queue under load.
 */
export async function monitorRedis(url: string, onLine: (line: string) => void): Promise<{ close(): void }> {
  const u = new URL(url);
  const socket = connect({ host: u.hostname, port: Number(u.port || 6379) });
  await new Promise<void>((resolve, reject) => {
    socket.once('connect', resolve);
    socket.once('error', reject);
  });
  let buffer = '';
  let ok: () => void;
  const started = new Promise<void>((r) => (ok = r));
  socket.on('data', (chunk: Buffer) => {
    buffer += chunk.toString('latin1');
    let nl: number;
    while ((nl = buffer.indexOf('\r\n')) >= 0) {
      const line = buffer.slice(0, nl);
      buffer = buffer.slice(nl + 2);
      if (line === '+OK') ok();
      else onLine(line);
    }
  });
  socket.on('error', () => undefined);
  socket.write('MONITOR\r\n');
  await started;
  return { close: () => socket.destroy() };
}

/** A fair scheduler on `queue` with the tests' defaults: no limit set, and a wait list target no test reaches. */
export function testScheduler(redis: Redis, queue: Queue, prefix: string, over: Partial<FairSchedulerOptions> = {}): FairScheduler {
  return createFairScheduler({
    redis,
    queue,
    keyPrefix: `${prefix}:fq`,
    bucketPrefix: prefix,
    defaults: { weight: 1, concurrency: 0, rpm: { pro: 0, flash: 0 }, tpm: 0 },
    modelLimits: () => ({}),
    leaseMs: 60_000,
    bufferTarget: 100_000,
    ...over,
  });
}
