import type { Queue } from 'bullmq';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { exitGuard, exitWithin, KILLED_EXIT_MS, spawnAgentq, type AgentqProcess } from '../helpers/processes.js';
import { UNTHROTTLED, figure, processEnv, runRows } from '../helpers/faults.js';
import { until } from '../helpers/wait.js';
import { activeByOrg, markedJob, openQueue, postBulk, putPlan, recordEvents, sampler } from '../helpers/fair.js';
import { startStack, type Stack } from '../helpers/stack.js';

const LOCK_MS = 2000;
const STALLED_MS = 1000;
const LEASE_MS = 2000;
const CAP = 3;

/**
 * An org capped at 3 jobs in flight, on three real worker processes (concurrency 5 each, so 15 slots) that
 * another, uncapped org keeps busy. One worker holding the capped org's jobs mid-call is SIGKILLed: BullMQ's
 * stalled check hands them to the others, the dispatcher's slots follow the jobs (never counted twice,
 * never lost), the org gets back to its whole capacity and every job completes exactly once.
 */
describe('fair dispatch: org concurrency cap across worker processes, and a worker killed mid-call', () => {
  let s: Stack;
  let queue: Queue;
  const children: AgentqProcess[] = [];
  let env: Record<string, string>;

  beforeAll(async () => {
    const timings = { LOCK_DURATION_MS: String(LOCK_MS), STALLED_INTERVAL_MS: String(STALLED_MS), FAIR_LEASE_MS: String(LEASE_MS) };
    s = await startStack({ ...UNTHROTTLED, ...timings, ADMIN_TOKEN: 'operator-secret-1234567890' });
    queue = openQueue(s);
    env = processEnv(s, { ...timings, WORKER_CONCURRENCY: '5', SHUTDOWN_GRACE_MS: '2000' });
  }, 60_000);
  afterAll(async () => {
    for (const c of children) if (c.child.exitCode === null && c.child.signalCode === null) c.kill('SIGKILL');
    await Promise.all(children.map((c) => exitWithin(c, KILLED_EXIT_MS, 'a worker to close once SIGKILLed')));
    await queue?.close();
    await s?.close();
  });

  const start = async () => {
    const p = spawnAgentq('worker', env);
    children.push(p);
    await p.waitForLog((l) => l.msg === 'worker started', 180_000);
    return p;
  };

  it(`in flight never above ${CAP}; after SIGKILL the jobs are recovered, the cap is whole again, every job completes once`, async () => {
    const tag = Date.now();
    const capped = `org_cap_${tag}`;
    const busy = `org_busy_${tag}`;
    const [keyC, keyB] = await Promise.all([s.newKey(capped), s.newKey(busy)]);
    expect((await putPlan(s, capped, { concurrency: CAP })).effective).toMatchObject({ concurrency: CAP });
    // The capped org's first three calls never answer (the victim holds them); later ones take 300 ms.
    s.emulator.script([
      { hang: true, match: { promptIncludes: `capped${tag}-` }, times: CAP },
      { latencyMs: 300, match: { promptIncludes: `capped${tag}-` }, times: -1 },
      { latencyMs: 100, match: { promptIncludes: `busy${tag}-` }, times: -1 },
    ]);
    const log = await recordEvents(s);
    const inFlight = sampler(async () => (await activeByOrg(queue)).get(capped) ?? 0, 15);
    const slots = sampler(async () => (await s.runtime.deps.cells[0].scheduler.orgStats(capped)).inFlight, 15);
    try {
      const victim = await start();
      const cappedIds = await postBulk(s, keyC, Array.from({ length: 24 }, (_, i) => markedJob(`capped${tag}-${i}`)));
      const busyIds = await postBulk(s, keyB, Array.from({ length: 120 }, (_, i) => markedJob(`busy${tag}-${i}`)));
      const hanging = () => s.emulator.calls().filter((c) => c.kind === 'generate' && c.fault === 'hang').length;
      await until('the victim to hold 3 of the capped org\'s jobs mid-call', async () => hanging() === CAP && ((await activeByOrg(queue)).get(capped) ?? 0) === CAP, 60_000);
      const held = (await queue.getActive(0, 1000)).filter((j) => j.data.orgId === capped).map((j) => j.id!);
      expect(held).toHaveLength(CAP);
      await Promise.all([start(), start()]);
      const killedAt = log.events.length;
      victim.kill('SIGKILL');
      expect(await exitWithin(victim, KILLED_EXIT_MS, 'the victim worker to close once SIGKILLed')).toBeNull();

      // BullMQ's stalled check gives the victim's jobs to the others, which run them with the slots they hold.
      for (const id of held) await log.waitFor((e) => e.jobId === id && e.event === 'completed', { from: killedAt, timeoutMs: 60_000 });
      const stalledSeen = log.events.slice(killedAt).filter((e) => e.event === 'stalled' && held.includes(e.jobId)).length;
      figure('cap: stalled events for the killed worker\'s jobs', stalledSeen);
      expect(stalledSeen).toBe(CAP);
      // After the kill the org runs at its whole capacity again: 3 at once (not 0 with slots lost to the dead worker).
      const afterKill = inFlight.values.length;
      await until('all of both orgs\' jobs completed', async () => {
        const states = await Promise.all([...cappedIds, ...busyIds].map(async (id) => (await queue.getJob(id))?.finishedOn));
        return states.every(Boolean);
      }, 120_000);
      const { max, samples } = await inFlight.stop();
      const slotMax = (await slots.stop()).max;
      const fullAfterKill = inFlight.values.slice(afterKill).filter((v) => v === CAP).length;
      figure('cap: samples / max active of the capped org / max slots held / samples at full capacity after the kill', { samples, max, slotMax, fullAfterKill });
      expect(samples).toBeGreaterThan(50);
      expect(max).toBeLessThanOrEqual(CAP);
      expect(slotMax).toBeLessThanOrEqual(CAP);
      expect(fullAfterKill).toBeGreaterThan(0);

      // Exactly once: one completed run per job, no failed run, no job lost; every slot came back.
      const rows = await runRows(s, [...cappedIds, ...busyIds]);
      const bad = [...rows].filter(([, r]) => r.completed !== 1 || r.failed !== 0);
      expect(bad).toEqual([]);
      for (const id of [...cappedIds, ...busyIds]) expect(await (await queue.getJob(id))!.getState()).toBe('completed');
      await until('the capped org\'s slots all released', async () => {
        const st = await s.runtime.deps.cells[0].scheduler.orgStats(capped);
        return st.inFlight === 0 && st.waiting === 0 && st.backoff === 0;
      }, 30_000);
      expect(hanging()).toBe(CAP);
    } finally {
      await inFlight.stop();
      await slots.stop();
      await log.close();
    }
  }, 240_000 + exitGuard(KILLED_EXIT_MS));
});
