import { Job, type Queue } from 'bullmq';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { randomUUID } from 'node:crypto';
import { defaultRegistry } from '../src/shared/agents/registry.js';
import { isParked, parkedJobOptions } from '../src/shared/fair/index.js';
import { agentJobOptions, retentionOf } from '../src/shared/queue/agent-queue.js';
import { createFairOrphanSweep } from '../src/workers/ops/fair-orphans.js';
import { UNTHROTTLED, figure, runRows } from './helpers/faults.js';
import { until } from './helpers/wait.js';
import { activeByOrg, markedJob, monitorRedis, openQueue, postBulk, postJob, putPlan, recordEvents, sampler } from './helpers/fair.js';
import { runCli } from './helpers/run-cli.js';
import { parseOrgsArgs, UsageError } from '../src/app/cli/orgs.js';
import { startStack, type Stack } from './helpers/stack.js';
import { estimateTokens } from '../src/shared/queue/estimate-tokens.js';
import { agentqPrefix, guardKeys, usageStreamKey } from '../src/shared/core/queue-keys.js';

const ADMIN_TOKEN = 'operator-secret-1234567890';

/**
 * Every way a job enters or leaves agentq goes through the fair dispatcher: plan changes apply at once,
 * flow children, pipeline steps and DLQ replays respect their org's cap, a cancelled waiting job leaves
 * its lane, and a job whose lane entry was never written (producer crash) is found and run.
 */
describe('fair dispatch on every path', () => {
  let s: Stack;
  let queue: Queue;
  let log: Awaited<ReturnType<typeof recordEvents>>;

  beforeAll(async () => {
    s = await startStack({ ...UNTHROTTLED, ADMIN_TOKEN, WORKER_CONCURRENCY: '10', JOB_ATTEMPTS: '1' }, { worker: true });
    queue = openQueue(s);
    log = await recordEvents(s);
  }, 90_000);
  afterAll(async () => {
    await log?.close();
    await queue?.close();
    await s?.close();
  });

  const newOrg = async (name: string, plan?: Record<string, number>) => {
    const org = `org_${name}_${randomUUID().slice(0, 6)}`;
    // An org-admin key: the DLQ replay below needs it; it enqueues and cancels as a member does.
    const key = await s.newKey(org, 'org-admin');
    if (plan) await putPlan(s, org, plan);
    return { org, key, auth: { authorization: `Bearer ${key}` } };
  };
  const stats = (org: string) => s.runtime.deps.cells[0].scheduler.orgStats(org);
  const cancel = (auth: { authorization: string }, id: string) => s.app.inject({ method: 'DELETE', url: `/v1/jobs/${id}`, headers: auth });
  const runsOf = async (id: string) => (await runRows(s, [id])).get(id)!;
  const redisNowMs = async () => {
    const [sec, usec] = await s.runtime.deps.redis.time();
    return Number(sec) * 1000 + Number(usec) / 1000;
  };

  it('a plan change applies at once, without restart: concurrency 1 -> 4 while the running job has not finished', async () => {
    const tag = randomUUID().slice(0, 8);
    const { org, auth } = await newOrg('plan', { concurrency: 1 });
    s.emulator.script({ latencyMs: 60_000, match: { promptIncludes: `plan${tag}-` }, times: -1 });
    const ids = await postBulk(s, auth.authorization.slice(7), Array.from({ length: 6 }, (_, i) => markedJob(`plan${tag}-${i}`)));
    await until('one job of the org running', async () => ((await activeByOrg(queue)).get(org) ?? 0) === 1);
    expect((await stats(org)).inFlight).toBe(1);
    const completedBefore = log.events.filter((e) => e.event === 'completed' && ids.includes(e.jobId)).length;
    // No job of the org finishes (each takes a minute): only the change itself can let more in.
    const view = await putPlan(s, org, { concurrency: 4 });
    figure('plan change: the PUT answer', { effective: view.effective, inFlight: view.inFlight, waiting: view.waiting });
    expect(view.effective).toMatchObject({ concurrency: 4 });
    // Applied before the change is acknowledged: 4 slots handed out by the time the PUT answers.
    expect(view.inFlight).toBe(4);
    await until('4 of the org\'s jobs running', async () => ((await activeByOrg(queue)).get(org) ?? 0) === 4, 20_000);
    expect(log.events.filter((e) => e.event === 'completed' && ids.includes(e.jobId)).length).toBe(completedBefore);
    // Back to 1: nothing new starts, the running ones are not touched.
    expect((await putPlan(s, org, { concurrency: 1 })).inFlight).toBe(4);
    for (const id of ids) await cancel(auth, id);
    await until('the org\'s slots released after cancelling', async () => (await stats(org)).inFlight === 0 && (await stats(org)).waiting === 0, 20_000);
  }, 60_000);

  it('npm run orgs -- set / show changes and shows a plan; a bad value exits 2 naming the flag', async () => {
    const org = `org_cli_${randomUUID().slice(0, 6)}`;
    const env = { DATABASE_URL: s.cfg.DATABASE_URL, REDIS_URL: s.cfg.REDIS_URL, QUEUE_PREFIX: s.cfg.QUEUE_PREFIX, ...UNTHROTTLED };
    const orgs = (args: string[]) => runCli('src/app/cli/orgs.ts', args, env);
    const set = await orgs(['set', org, '--weight', '3', '--concurrency', '2', '--rpm-pro', '7', '--rpm-flash', '70', '--tpm', '5000']);
    expect(set.stderr).toBe('');
    expect(set.code).toBe(0);
    expect(JSON.parse(set.stdout)).toMatchObject({ org, own: { weight: 3, concurrency: 2, rpmPro: 7, rpmFlash: 70, tpm: 5000 }, effective: { weight: 3, concurrency: 2, rpm: { pro: 7, flash: 70 }, tpm: 5000 } });
    // The dispatcher's copy changed (what the next dispatch reads), and the API shows the same plan.
    expect(await s.runtime.deps.cells[0].scheduler.getPlan(org)).toEqual({ weight: 3, concurrency: 2, rpm: { pro: 7, flash: 70 }, tpm: 5000 });
    const api = await s.app.inject({ method: 'GET', url: `/admin/orgs/${org}/plan`, headers: { authorization: `Bearer ${ADMIN_TOKEN}` } });
    expect(api.json()).toMatchObject({ own: { weight: 3, concurrency: 2 } });
    const cleared = await orgs(['set', org, '--concurrency', 'default']);
    expect(cleared.code).toBe(0);
    const shown = await orgs(['show', org]);
    expect(shown.code).toBe(0);
    expect(JSON.parse(shown.stdout).own).toEqual({ weight: 3, rpmPro: 7, rpmFlash: 70, tpm: 5000 });
    expect(JSON.parse(shown.stdout).effective.concurrency).toBe(s.cfg.ORG_CONCURRENCY);

    // A refused value: the real command exits 2 with the usage text, naming the flag, before touching anything.
    // Values the plan's columns would round or overflow are a 400 naming the field, never a 500 or a silent change.
    for (const [body, path] of [
      [{ monthlyBudgetUsd: 100_000_000 }, 'monthlyBudgetUsd'],
      [{ monthlyBudgetUsd: 0.00004 }, 'monthlyBudgetUsd'],
      [{ weight: 0.0001 }, 'weight'],
    ] as const) {
      const res = await s.app.inject({ method: 'PUT', url: `/admin/orgs/${org}/plan`, headers: { authorization: `Bearer ${ADMIN_TOKEN}` }, payload: body });
      expect(res.statusCode, JSON.stringify(body)).toBe(400);
      expect(res.json().details[0].path, JSON.stringify(body)).toContain(path);
    }
    const bad = await orgs(['set', org, '--concurrency', 'abc']);
    expect(bad.code).toBe(2);
    expect(bad.stderr).toContain('--concurrency');
    expect(bad.stderr).toContain('usage:');
    // The other refusals come from the same parser (what `main` maps to exit 2), checked without a process each.
    for (const [args, flag] of [
      [['set', org, '--weight', '0'], '--weight'],
      [['set', org, '--rpm-flash', '-5'], '--rpm-flash'],
      [['set', org, '--concurrency', '2.5'], '--concurrency'],
    ] as const) {
      expect(() => parseOrgsArgs([...args]), args.join(' ')).toThrow(UsageError);
      expect(() => parseOrgsArgs([...args])).toThrow(flag);
    }
    // Nothing was changed by the refused commands.
    expect(await s.runtime.deps.cells[0].scheduler.getPlan(org)).toEqual({ weight: 3, rpm: { pro: 7, flash: 70 }, tpm: 5000 });
  }, 120_000);

  it('flow children and pipeline steps of a capped org respect its cap', async () => {
    const tag = randomUUID().slice(0, 8);
    const { org, auth } = await newOrg('flows', { concurrency: 2 });
    s.emulator.script({ latencyMs: 150, match: { promptIncludes: `flow${tag}` }, times: -1 });
    const active = sampler(async () => (await activeByOrg(queue)).get(org) ?? 0, 10);
    const slots = sampler(async () => (await stats(org)).inFlight, 10);
    try {
      const tasks = Array.from({ length: 8 }, (_, i) => markedJob(`flow${tag}-${i}`));
      const post = await s.app.inject({ method: 'POST', url: '/v1/flows/parallel', headers: auth, payload: { tasks } });
      expect(post.statusCode).toBe(202);
      const runs = await Promise.all(
        Array.from({ length: 3 }, async (_, i) => {
          const res = await s.app.inject({
            method: 'POST',
            url: '/v1/pipelines/wizard_completion',
            headers: auth,
            payload: { input: { companyName: `flow${tag} Pipe ${i}`, answers: [{ question: 'What do you build?', answer: `flow${tag} robots` }] } },
          });
          expect(res.statusCode).toBe(202);
          return res.json().id as string;
        }),
      );
      const flow = (await s.app.inject({ method: 'GET', url: `/v1/flows/${post.json().id}?waitMs=60000`, headers: auth })).json();
      expect(flow.state).toBe('completed');
      for (const id of runs) {
        const run = await until('the pipeline run finished', async () => {
          const r = (await s.app.inject({ method: 'GET', url: `/v1/pipelines/runs/${id}?waitMs=20000`, headers: auth })).json();
          return r.state === 'completed' || r.state === 'failed' ? r : undefined;
        }, 90_000);
        expect(run.state).toBe('completed');
      }
    } finally {
      await active.stop();
      await slots.stop();
    }
    figure('flows/pipelines: samples, max active, max slots of the org capped at 2', { samples: active.samples, max: active.max, slots: slots.max });
    expect(active.samples).toBeGreaterThan(20);
    expect(active.max).toBe(2);
    expect(slots.max).toBeLessThanOrEqual(2);
  }, 150_000);

  it('a cancelled waiting job leaves its lane at once and frees nothing it did not hold', async () => {
    const tag = randomUUID().slice(0, 8);
    const { org, auth } = await newOrg('cancel', { concurrency: 1 });
    s.emulator.script({ latencyMs: 60_000, match: { promptIncludes: `cancel${tag}-` }, times: -1 });
    const ids = await postBulk(s, auth.authorization.slice(7), Array.from({ length: 4 }, (_, i) => markedJob(`cancel${tag}-${i}`)));
    await until('the first job running', async () => ((await activeByOrg(queue)).get(org) ?? 0) === 1);
    expect(await stats(org)).toMatchObject({ waiting: 3, inFlight: 1 });
    const waitingJob = ids[2];
    expect((await s.app.inject({ method: 'GET', url: `/v1/jobs/${waitingJob}`, headers: auth })).json().waitingFor).toMatchObject({ reason: 'org_concurrency' });
    const res = await cancel(auth, waitingJob);
    expect(res.statusCode).toBe(200);
    expect(res.json().state).toBe('cancelled');
    // At once: the answer is given after the lane was left.
    expect(await stats(org)).toMatchObject({ waiting: 2, inFlight: 1 });
    expect(await Job.fromId(queue, waitingJob)).toBeUndefined();
    // The running job still holds the only slot: nothing else of the org was let in.
    expect((await activeByOrg(queue)).get(org)).toBe(1);
    expect((await s.app.inject({ method: 'GET', url: `/v1/jobs/${ids[3]}`, headers: auth })).json()).toMatchObject({ state: 'waiting', waitingFor: { reason: 'org_concurrency' } });
    // Cancelling it twice changes nothing.
    expect((await cancel(auth, waitingJob)).statusCode).toBe(409);
    expect(await stats(org)).toMatchObject({ waiting: 2, inFlight: 1 });
    // Whatever each job is doing by then (running, dispatched by the first one's release, waiting), its cancel
    // is done (200), accepted (202: running) or it is already cancelled: never an error that leaves it to run.
    for (const id of ids) expect([200, 202, 409]).toContain((await cancel(auth, id)).statusCode);
    await until('all slots back', async () => (await stats(org)).inFlight === 0 && (await stats(org)).waiting === 0, 20_000);
  }, 60_000);

  it('charges an org\'s TPM bucket what its calls really used, not the estimate its dispatch charged', async () => {
    const cap = 6000;
    const { org, auth } = await newOrg('tpm', { tpm: cap });
    const startedAt = await redisNowMs();
    const request = markedJob(`tpm-${randomUUID().slice(0, 8)}`);
    const id = await postJob(s, auth.authorization.slice(7), request);
    const res = await s.app.inject({ method: 'GET', url: `/v1/jobs/${id}?waitMs=30000`, headers: auth });
    const job = res.json() as { state: string; result: { model: string; tokensUsed: { input: number; output: number } } };
    expect(job.state).toBe('completed');
    const used = job.result.tokensUsed.input + job.result.tokensUsed.output;
    const estimate = estimateTokens(request.input);
    const bucket = guardKeys.tokenBucket(agentqPrefix(s.cfg.QUEUE_PREFIX), `tpm:org:${org}:${job.result.model}`);
    const rate = cap / 60_000;
    const levelNow = async () => {
      const [tokens, ts] = await s.runtime.deps.redis.hmget(bucket, 'tokens', 'ts');
      const now = await redisNowMs();
      return { now, level: Math.min(cap, Number(tokens) + (now - Number(ts)) * rate) };
    };
    // The correction rides on the gate's next claim or release, or goes alone within 250 ms of the call.
    const { now, level } = await until('the correction applied to the org bucket', async () => {
      const l = await levelNow();
      return l.level >= cap - used - 1 && l;
    });
    figure('org TPM bucket after one job', { cap, used, estimate: Math.round(estimate), level: Math.round(level) });
    // Charged exactly `used` since the job was enqueued, give or take what refilled meanwhile; the estimate
    // (the dispatch's charge, uncorrected) would leave it lower by estimate - used.
    expect(Math.abs(estimate - used)).toBeGreaterThan(10);
    expect(level).toBeGreaterThanOrEqual(cap - used - 1);
    expect(level).toBeLessThanOrEqual(Math.min(cap, cap - used + (now - startedAt) * rate + 1));
  });

  it('a job answered from the result cache gives back the request its dispatch charged: an org at 2 requests a minute gets 5 repeats at once', async () => {
    const { org, auth } = await newOrg('hits', { rpmPro: 2, rpmFlash: 2 });
    const request = markedJob(`hits-${randomUUID().slice(0, 8)}`);
    const answer = async (id: string) => {
      const res = await s.app.inject({ method: 'GET', url: `/v1/jobs/${id}?waitMs=20000`, headers: auth });
      return res.json() as { state: string; result?: { cacheHit?: string; model: string } };
    };
    const first = await answer(await postJob(s, auth.authorization.slice(7), request));
    expect(first).toMatchObject({ state: 'completed' });
    expect(first.result?.cacheHit).toBeFalsy();
    // One request of the two is spent (the computed answer). Each repeat is dispatched on the other one, is
    // answered from the cache, and gives it back: without the refund the third would wait 30 s for a refill.
    const started = Date.now();
    for (let i = 0; i < 5; i++) {
      const again = await answer(await postJob(s, auth.authorization.slice(7), request));
      expect(again.state).toBe('completed');
      expect(again.result?.cacheHit).toMatch(/^(l1|l2)$/);
    }
    figure('five cache hits of an org at 2 RPM', { ms: Date.now() - started });
    // The org's bucket holds one charge: the computed call's (give or take what refilled meanwhile).
    const bucket = guardKeys.tokenBucket(agentqPrefix(s.cfg.QUEUE_PREFIX), `rpm:org:${org}:${first.result!.model}`);
    await until('the last refund applied', async () => {
      const [tokens, ts] = await s.runtime.deps.redis.hmget(bucket, 'tokens', 'ts');
      return tokens !== null && Math.min(2, Number(tokens) + ((await redisNowMs()) - Number(ts)) * (2 / 60_000)) >= 1 - 0.01;
    });
  }, 60_000);

  it('an attempt answered from L1 appends its usage row in its claim: no XADD of its own, and the row reaches agent_runs', async () => {
    const { auth } = await newOrg('l1rows');
    const key = auth.authorization.slice(7);
    const request = markedJob(`l1rows-${randomUUID().slice(0, 8)}`);
    const answer = async (id: string) => {
      const res = await s.app.inject({ method: 'GET', url: `/v1/jobs/${id}?waitMs=20000`, headers: auth });
      return res.json() as { state: string; result?: { cacheHit?: string } };
    };
    // Computed once, then read back from L2, which fills this process's L1 (the worker's).
    expect((await answer(await postJob(s, key, request))).result?.cacheHit).toBeFalsy();
    expect((await answer(await postJob(s, key, request))).result?.cacheHit).toBe('l2');
    const usage = usageStreamKey(s.cfg.QUEUE_PREFIX);
    const lines: string[] = [];
    const monitor = await monitorRedis(s.cfg.REDIS_URL, (line) => lines.push(line));
    const ids: string[] = [];
    try {
      for (let i = 0; i < 3; i++) {
        ids.push(await postJob(s, key, request));
        expect(await answer(ids[i])).toMatchObject({ state: 'completed', result: { cacheHit: 'l1' } });
      }
    } finally {
      monitor.close();
    }
    // Each row went in with its claim (an XADD inside the fair script's `claim` call), none by a call of its
    // own (an XADD, or the usage append script run for the run sink's ride).
    const rowAppends: Array<{ id: string; by: string }> = [];
    let caller = '';
    for (const line of lines) {
      if (!line.includes(' lua]')) caller = line;
      else if (/"xadd"/i.test(line) && line.includes(`"${usage}"`)) {
        const id = ids.find((i) => line.includes(i));
        if (id) rowAppends.push({ id, by: caller.includes('"claim"') && caller.includes(`"${id}"`) ? 'claim' : caller });
      }
    }
    expect(lines.filter((l) => !l.includes(' lua]') && /"xadd"/i.test(l) && l.includes(`"${usage}"`))).toEqual([]);
    expect(rowAppends).toEqual(ids.map((id) => ({ id, by: 'claim' })));
    // No model is called, so no calling_model stage is written for them.
    expect(lines.filter((l) => /"hset"/i.test(l) && l.includes('"progress"') && ids.some((id) => l.includes(`:${id}"`)))).toEqual([]);
    await runRows(s, ids);
    const { rows } = await s.infra.db.pool.query<{ job_id: string; state: string; cache_hit: string; cost_usd: string }>(
      'SELECT job_id, state, cache_hit, cost_usd FROM agent_runs WHERE job_id = ANY($1) ORDER BY job_id',
      [ids],
    );
    expect(rows.map((r) => [r.job_id, r.state, r.cache_hit, Number(r.cost_usd)])).toEqual([...ids].sort().map((id) => [id, 'completed', 'l1', 0]));
  }, 60_000);

  it('a DLQ replay runs only when its org has a free slot', async () => {
    const tag = randomUUID().slice(0, 8);
    const { org, auth } = await newOrg('dlq', { concurrency: 1 });
    s.emulator.script({ status: 400, message: 'scripted bad request', match: { promptIncludes: `dead${tag}` }, times: 1 });
    const dead = await postJob(s, auth.authorization.slice(7), markedJob(`dead${tag}`));
    await until('the job dead-lettered', async () => (await s.app.inject({ method: 'GET', url: '/v1/dlq', headers: auth })).json().entries?.some((e: { id: string }) => e.id === dead), 30_000);
    expect(await runsOf(dead)).toEqual({ completed: 0, failed: 1 });
    // A long job takes the org's only slot.
    s.emulator.script({ latencyMs: 60_000, match: { promptIncludes: `holder${tag}` }, times: 1 });
    const holder = await postJob(s, auth.authorization.slice(7), markedJob(`holder${tag}`));
    await until('the holder running', async () => (await (await Job.fromId(queue, holder))?.getState()) === 'active');
    const from = log.events.length;
    const retry = await s.app.inject({ method: 'POST', url: `/v1/dlq/${dead}/retry`, headers: auth, payload: {} });
    expect(retry.statusCode).toBe(202);
    // BullMQ hands the replay to a worker, which finds no slot: it goes back to its lane, parked.
    await until('the replay parked in its lane', async () => (await Job.fromId(queue, dead))?.getState().then((st) => st === 'delayed') && (await stats(org)).waiting === 1, 20_000);
    // Shown as waiting for its org's slot (the view must see a job parked again, not only one parked at add).
    const view = (await s.app.inject({ method: 'GET', url: `/v1/jobs/${dead}`, headers: auth })).json();
    expect(view).toMatchObject({ state: 'waiting', waitingFor: { reason: 'org_concurrency' } });
    expect(await runsOf(dead)).toEqual({ completed: 0, failed: 1 });
    expect((await activeByOrg(queue)).get(org)).toBe(1);
    // The slot frees (the holder is cancelled): then, and only then, the replay runs.
    const cancelled = await cancel(auth, holder);
    expect(cancelled.json().state).toBe('cancelling');
    const holderEnd = await log.waitFor((e) => e.jobId === holder && e.event === 'failed', { from, timeoutMs: 30_000 });
    const done = await log.waitFor((e) => e.jobId === dead && e.event === 'completed', { from, timeoutMs: 30_000 });
    const runStart = log.events.slice(from, done).map((e, i) => ({ ...e, i: i + from })).filter((e) => e.jobId === dead && e.event === 'active').pop()!;
    expect(runStart.i).toBeGreaterThan(holderEnd);
    expect(await runsOf(dead)).toEqual({ completed: 1, failed: 1 });
  }, 90_000);

  it('a parked job the dispatcher never laned (producer crash) is found by the orphan sweep and completes', async () => {
    const { org } = await newOrg('orphan');
    const registry = defaultRegistry();
    const models = { fast: s.cfg.GEMINI_MODEL_FAST, pro: s.cfg.GEMINI_MODEL_PRO };
    const addOrphan = async (enqueuedAt: number) => {
      const id = randomUUID();
      const req = markedJob(`orphan-${id}`);
      // The producer's first step only (BullMQ add, parked), as if it died before scheduler.enqueue.
      await queue.add(`${req.agent}:${req.action}`, { orgId: org, agent: req.agent, action: req.action, input: req.input, enqueuedAt }, { ...agentJobOptions(retentionOf(s.cfg)), ...parkedJobOptions(id) });
      return id;
    };
    const old = await addOrphan(Date.now() - 60_000);
    const fresh = await addOrphan(Date.now());
    // Dispatching does not find it: it is in no lane, so it would wait forever.
    await s.runtime.deps.cells[0].scheduler.dispatch();
    const parked = (await Job.fromId(queue, old))!;
    expect(isParked(parked)).toBe(true);
    expect(await parked.getState()).toBe('delayed');
    expect(await s.runtime.deps.cells[0].scheduler.orphans(0, 1000).then((o) => o.ids)).toEqual(expect.arrayContaining([old, fresh]));
    const sweep = createFairOrphanSweep({ queue: s.runtime.queue, scheduler: s.runtime.deps.cells[0].scheduler, agents: registry, models, logger: s.logger });
    const r = await sweep();
    figure('orphans: sweep result', r);
    // The old one is laned; the fresh one may still have a live producer between its two steps.
    expect(r.laned).toBe(1);
    await until('the orphan completed', async () => (await (await Job.fromId(queue, old))?.getState()) === 'completed', 30_000);
    expect((await runRows(s, [old])).get(old)).toEqual({ completed: 1, failed: 0 });
    const freshJob = (await Job.fromId(queue, fresh))!;
    expect(await freshJob.getState()).toBe('delayed');
    expect((await s.runtime.deps.cells[0].scheduler.orphans(0, 1000)).ids).toContain(fresh);
    expect((await s.runtime.deps.cells[0].scheduler.orphans(0, 1000)).ids).not.toContain(old);
    await freshJob.remove();
  }, 60_000);
});
