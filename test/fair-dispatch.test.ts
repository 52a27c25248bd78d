import { Job, type Queue } from 'bullmq';
import { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { isParked } from '../src/shared/fair/index.js';
import { startRedisServer, type RedisServerHandle } from '../src/shared/infra/redis/redis-server.js';
import { UNTHROTTLED, figure, runRows } from './helpers/faults.js';
import { until } from './helpers/wait.js';
import { commandsProcessed, markedJob, monitorRedis, openQueue, postBulk, putPlan, recordEvents, redisNow } from './helpers/fair.js';
import { startStack, type Stack } from './helpers/stack.js';
import { usageWritten } from './helpers/usage.js';

const FLASH = 'gemini-2.5-flash';
const RPM = 60;
/**
 * Jobs a wake-up of the sleeping lane dispatches: what the org's bucket refills in 10 s, as the lane holds more than
 * a minute of the org's rate (fair-core WAKE_BATCH.deepMs; 5 s for a shallower backlog).
 */
const WAKE_BATCH = (RPM * 10) / 60;

/**
 * Org A's rpm-flash plan allows 60 jobs a minute: a bulk of 300 must be dispatched, not retried. The
 * dispatcher hands out the bucket's 60 at once and then 10 s of refills per wake-up (a deep backlog's batch); the
 * rest stay parked (BullMQ's delayed set, attempt 0), cost Redis nothing while they wait, and say why they wait.
 * A redis-server of its own, so INFO's command counter counts this test only.
 */
describe('fair dispatch: rate-limited org waits parked, not retried', () => {
  let redisServer: RedisServerHandle;
  let s: Stack;
  let queue: Queue;
  let probe: Redis;

  beforeAll(async () => {
    redisServer = await startRedisServer();
    s = await startStack({ ...UNTHROTTLED, REDIS_URL: redisServer.url, ADMIN_TOKEN: 'operator-secret-1234567890', WORKER_CONCURRENCY: '100', JOB_ATTEMPTS: '3' }, { worker: true });
    queue = openQueue(s);
    probe = new Redis(redisServer.url);
  }, 90_000);
  afterAll(async () => {
    probe?.disconnect();
    await queue?.close();
    await s?.close();
    await redisServer?.stop();
  });

  it(`bursts ${RPM}, then ${WAKE_BATCH} per wake-up; the rest stay parked at attempt 0, idle in Redis, and say rate_limited`, async () => {
    const orgA = `org_rl_${Date.now()}`;
    const keyA = await s.newKey(orgA);
    const plan = await putPlan(s, orgA, { rpmFlash: RPM });
    expect(plan.effective).toMatchObject({ rpm: { flash: RPM } });
    s.emulator.script({ latencyMs: 150, match: { promptIncludes: 'ratelim-' }, times: -1 });
    const log = await recordEvents(s);
    try {
      const t0 = await redisNow(probe);
      const ids = await postBulk(s, keyA, Array.from({ length: 300 }, (_, i) => markedJob(`ratelim-${i}`, FLASH)));
      expect(ids).toHaveLength(300);
      const idSet = new Set(ids);
      const startsOfA = () => log.events.filter((e) => e.event === 'active' && idSet.has(e.jobId));

      // The burst: the bucket's 60, then nothing until a token refills. Its jobs finish before observing.
      await log.waitFor(() => startsOfA().length >= RPM, { timeoutMs: 60_000 });
      const completedOfA = () => log.events.filter((e) => e.event === 'completed' && idSet.has(e.jobId)).length;
      await log.waitFor(() => completedOfA() >= RPM, { timeoutMs: 60_000 });
      // And their usage rows are written (they travel through a Redis Stream whose entries name the jobs).
      await usageWritten(s);
      // Steady state: a wake-up every 10 s starts the 10 jobs the bucket refilled. Each window ends at a start, so it
      // holds at most one wake-up. Two windows: three more wake-ups leave more than 200 of the 300 waiting.
      // MONITOR tells which job ids any command (scripts' included) touched in each window.
      const UUID = /[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}/g;
      let touched = new Set<string>();
      const monitor = await monitorRedis(redisServer.url, (line) => {
        for (const m of line.match(UUID) ?? []) if (idSet.has(m)) touched.add(m);
      });
      const marks: Array<{ starts: number; commands: number; touched: Set<string>; startedBy: Set<string> }> = [];
      const windows = 2;
      let seen = startsOfA().length;
      while (marks.length < windows + 1) {
        const target = seen + 1;
        await log.waitFor(() => startsOfA().length >= target, { timeoutMs: 30_000 });
        seen = startsOfA().length;
        marks.push({ starts: seen, commands: await commandsProcessed(probe), touched, startedBy: new Set(startsOfA().map((e) => e.jobId)) });
        touched = new Set();
      }
      monitor.close();
      const now = await redisNow(probe);
      const started = startsOfA().length;
      // Tokens available by `now`: the bucket's capacity plus one per second since before the bulk. A
      // dispatcher that ignored the limit (or let retries through) would have started far more by now.
      const allowed = RPM + Math.floor((now - t0) / 1000) + 1;
      figure('rate limit: jobs started / tokens available since the bulk', { started, allowed, elapsedS: Math.round((now - t0) / 1000) });
      expect(started).toBeGreaterThanOrEqual(RPM);
      expect(started).toBeLessThanOrEqual(allowed);

      // Redis traffic while A waits: each wake-up starts its batch, and the 230-odd waiting jobs cost nothing.
      // A job that already ran may be touched again (its completion, its retention trim); a waiting one may not,
      // except the wake-up's batch, promoted before their 'active' events are read, and the lane's next head.
      const perWindow = marks.slice(1).map((m, i) => ({
        starts: m.starts - marks[i].starts,
        commands: m.commands - marks[i].commands,
        jobsTouched: m.touched.size,
        waitingTouched: [...m.touched].filter((id) => !m.startedBy.has(id)),
      }));
      figure('rate limit: per dispatch wake-up window: jobs started, Redis commands, distinct jobs of A any command touched, and the waiting ones among them', perWindow);
      const waitingNow = 300 - started;
      expect(waitingNow).toBeGreaterThan(200);
      for (const w of perWindow) {
        expect(w.starts).toBeLessThanOrEqual(WAKE_BATCH + 1);
        // A batch's runs cost a few hundred commands; the 200+ waiting jobs add none: not polled, retried or
        // re-promoted. Of the jobs still waiting, only the batch being started and the lane's next head are touched.
        expect(w.commands).toBeLessThan(WAKE_BATCH * 500);
        expect(w.waitingTouched.length, `waiting jobs touched: ${w.waitingTouched.join(', ')}`).toBeLessThanOrEqual(WAKE_BATCH + 1);
      }

      // The jobs not started are parked in BullMQ's delayed set, never in wait, never attempted.
      const startedIds = new Set(startsOfA().map((e) => e.jobId));
      const waitingIds = ids.filter((id) => !startedIds.has(id));
      const waitList = new Set(await queue.getWaiting(0, -1).then((js) => js.map((j) => j.id)));
      let parkedCount = 0;
      for (const id of waitingIds.slice(-100)) {
        const job = (await Job.fromId(queue, id))!;
        if (waitList.has(id)) continue; // dispatched between the two reads
        expect(job.attemptsMade).toBe(0);
        expect(isParked(job)).toBe(true);
        expect(await job.getState()).toBe('delayed');
        parkedCount++;
      }
      expect(parkedCount).toBeGreaterThan(90);
      // No churn: each job was added once (one 'delayed' event: parked) and promoted at most once.
      const perJob = new Map<string, Record<string, number>>();
      for (const e of log.events) {
        if (!idSet.has(e.jobId)) continue;
        const c = perJob.get(e.jobId) ?? {};
        c[e.event] = (c[e.event] ?? 0) + 1;
        perJob.set(e.jobId, c);
      }
      for (const id of ids) {
        const c = perJob.get(id) ?? {};
        expect(c.delayed ?? 0, `delayed events of ${id}`).toBeLessThanOrEqual(1);
        expect(c.waiting ?? 0, `waiting events of ${id}`).toBeLessThanOrEqual(1);
        expect(c.failed ?? 0).toBe(0);
      }
      // A job promoted since `startedIds` was read (a wake-up's batch) was dispatched, not churned: it is
      // in wait or running or done, never back among the parked.
      const promotedSince = ids.filter((id) => !startedIds.has(id) && (perJob.get(id)?.waiting ?? 0) > 0);
      expect(promotedSince.length).toBeLessThanOrEqual(10);
      for (const id of promotedSince) expect(['waiting', 'active', 'completed']).toContain(await queue.getJobState(id));

      // The last job says why it waits: A's per-org rpm bucket for the model, and when it is looked at again.
      const last = ids[ids.length - 1];
      const view = (await s.app.inject({ method: 'GET', url: `/v1/jobs/${last}`, headers: { authorization: `Bearer ${keyA}` } })).json();
      figure('rate limit: GET /v1/jobs/:id of the last job', view.waitingFor);
      expect(view.state).toBe('waiting');
      expect(view.attempts).toBe(0);
      expect(view.waitingFor.reason).toBe('rate_limited');
      expect(view.waitingFor.limit).toContain('rpm:org');
      expect(view.waitingFor.limit).toContain(orgA);
      expect(Number.isNaN(Date.parse(view.waitingFor.eta))).toBe(false);
      expect(Date.parse(view.waitingFor.eta)).toBeGreaterThan(t0);

      // The jobs that ran, ran once each.
      const done = await until('the burst completed', async () => {
        const completed = log.events.filter((e) => e.event === 'completed' && idSet.has(e.jobId)).map((e) => e.jobId);
        return completed.length >= RPM ? completed : undefined;
      }, 60_000);
      const rows = await runRows(s, done);
      for (const id of done) expect(rows.get(id)).toEqual({ completed: 1, failed: 0 });
    } finally {
      await log.close();
    }
  }, 180_000);
});
