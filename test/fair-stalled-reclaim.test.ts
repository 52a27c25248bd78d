import type { Job, MinimalJob } from 'bullmq';
import { describe, expect, it, vi } from 'vitest';
import { defaultRegistry } from '../src/shared/agents/registry.js';
import { createLogger } from '../src/shared/core/logger.js';
import type { AgentJobData, AgentResult } from '../src/shared/core/types.js';
import { estimateTokens } from '../src/shared/queue/estimate-tokens.js';
import type { FairGate } from '../src/workers/fair-gate.js';
import { createAgentProcessor } from '../src/workers/processor.js';
import { randomOrg } from './helpers/env.js';
import { useStalledGates } from './helpers/stalled-gates.js';
import { POLL } from './helpers/wait.js';

/**
 * A job fetched again while its first attempt still runs: worker A claimed it (its slot, its dispatch's charge on the
 * org's buckets), A's lock lapsed (its event loop blocked, SIGSTOP) and BullMQ's stalled check moved it back to the
 * wait list, and worker B fetched and claimed it. Both attempts then end, each through its own fair gate. One
 * dispatch paid for one call: the attempt whose claim came first settles that charge (gives it back unspent, or
 * corrects it by its call's usage), the other's calls are charged as any call no dispatch paid for ('run_unpaid':
 * the rate-limit guard takes its request itself). The slot is one lease, freed once, by the attempt BullMQ lets
 * finish; the other's completion is refused (it lost its lock), so its gate releases nothing. Each worker is a
 * BullMQ worker that does not run its processor, with the real fair gate: each attempt does by hand what the
 * processor and the rate-limit guard do at that point, so every order happens every time, without sleeps.
 */
const RPM = 4;

type AgentJob = Job<AgentJobData, AgentResult>;

describe('a stalled job fetched again: its slot and its dispatch charge are settled once', () => {
  /** The gate whose backoff strategy a retryable failure runs (the process that fails the attempt). */
  let retryingOn: FairGate | undefined;
  // BullMQ's backoff strategy for a retryable failure, as the agent worker's: the gate the test names parks it.
  const h = useStalledGates({ backoffStrategy: (_n: number, _t?: string, _e?: Error, job?: MinimalJob) => retryingOn!.retryDelay(job!, 1000) });
  const { cell, gate, stall } = h;
  const agents = defaultRegistry();
  const models = () => ({ fast: h.s.cfg.GEMINI_MODEL_FAST, pro: h.s.cfg.GEMINI_MODEL_PRO });
  const inFlight = async (org: string) => (await cell().scheduler.orgStats(org)).inFlight;

  /** The worker's fetch of `id` under `token` (jobs ahead of it in the wait list are fetched too, and left held). */
  async function fetch(id: string, token: string): Promise<AgentJob> {
    let job: AgentJob | undefined;
    for (let i = 0; i < 10 && job?.id !== id; i++) job = await h.worker.getNextJob(token, { block: false });
    expect(job?.id).toBe(id);
    return job!;
  }

  /**
   * A fresh org limited to RPM requests a minute and to six jobs' estimates of tokens, with three jobs dispatched:
   * the one the test stalls, and two more that keep its buckets below their capacity even after two refunds (a
   * refund into a full bucket would not show), and hold two slots.
   */
  async function threeDispatched(marker: string) {
    const org = randomOrg();
    const key = await h.s.newKey(org);
    const input = { startup: { name: `${marker} Co`, industry: 'logistics', stage: 'seed', description: 'A job fetched twice' } };
    const est = estimateTokens(input);
    const { scheduler } = cell();
    await scheduler.setPlan(org, { rpm: { pro: RPM, flash: RPM }, tpm: 6 * est });
    const ids: string[] = [];
    for (let i = 0; i < 3; i++) {
      const res = await h.s.app.inject({ method: 'POST', url: '/v1/jobs', headers: { authorization: `Bearer ${key}` }, payload: { agent: 'RiskAnalyzer', action: 'analyze_risks', input } });
      expect(res.statusCode).toBe(202);
      ids.push(res.json().id as string);
    }
    // An ask of 16: the wait list then lacks a batch (8) whatever the earlier tests left in it (their other two jobs,
    // dispatched, never fetched), so the three are dispatched now. At 4, with the last test's worker still registered
    // at 4, a list holding its two lacked 6 of 8: no batch once a target under 9 is refilled at all but one job.
    await scheduler.dispatch({ id: `w-${marker}`, concurrency: 4, ask: 16, ttlMs: 60_000 });
    const record = await h.s.runtime.deps.redis.hgetall(`${scheduler.keys.named.jobPrefix}${ids[0]}`);
    expect(record).toMatchObject({ o: org, st: 'lease', e: String(est) });
    const model = record.m;
    const rpmKey = `${scheduler.keys.named.tbRpmOrgPrefix}${org}:${model}`;
    const tpmKey = `${scheduler.keys.named.tbTpmOrgPrefix}${org}:${model}`;
    const read = async (k: string) => {
      const [tokens, ts] = await h.s.runtime.deps.redis.hmget(k, 'tokens', 'ts');
      return { tokens: Number(tokens), ts: Number(ts) };
    };
    const snapshot = async () => ({ rpm: await read(rpmKey), tpm: await read(tpmKey) });
    const before = await snapshot();
    /** What came back to the org's buckets since `before`, net of what they refilled meanwhile (negative: spent). */
    const givenBack = async () => {
      const after = await snapshot();
      const net = (b: { tokens: number; ts: number }, a: { tokens: number; ts: number }, perMin: number) => a.tokens - b.tokens - ((a.ts - b.ts) * perMin) / 60_000;
      return { requests: net(before.rpm, after.rpm, RPM), tokens: net(before.tpm, after.tpm, 6 * est) };
    };
    expect(await inFlight(org)).toBe(3);
    return { org, id: ids[0], others: ids.slice(1), est, model, givenBack };
  }

  type Case = Awaited<ReturnType<typeof threeDispatched>>;

  /** The attempt ends before a model call (a cache hit, a refusal): the processor's refund, a no-op when unpaid. */
  const endsUnspent = (g: FairGate, job: AgentJob) => g.refundUnspent(job);

  /**
   * The attempt calls the model, billed `used` tokens, as the rate-limit guard charges it: prepaid ('run'), the
   * dispatch's estimate is corrected by the usage; unpaid ('run_unpaid'), the org's request is taken for it and its
   * usage charged in full.
   */
  async function callsModel(g: FairGate, c: Case, admitted: string, used: number) {
    if (admitted === 'run_unpaid') {
      expect(await g.orgRequests.take(c.org, c.model, [])).toMatchObject({ allowed: true });
      g.correct(c.org, c.model, { orgTokens: used, modelTokens: 0 });
    } else {
      expect(admitted).toBe('run');
      g.correct(c.org, c.model, { orgTokens: used - c.est, modelTokens: used - c.est, requests: 0 });
    }
  }

  /** BullMQ records `job`'s outcome under `token` and the gate then frees its slot (worker-service's 'completed'). */
  async function completes(g: FairGate, job: AgentJob, token: string) {
    await job.moveToCompleted({} as AgentResult, token, false);
    g.finished(job);
  }

  /** The stalled attempt's completion is refused by BullMQ (its lock is gone): no 'completed' event, no release. */
  async function refused(job: AgentJob, token: string) {
    await expect(job.moveToCompleted({} as AgentResult, token, false)).rejects.toThrow();
  }

  /** Both gates send what they hold; then only the org's other two jobs hold slots, and no lease is left for the job. */
  async function settled(c: Case, ...gates: FairGate[]) {
    for (const g of gates) await g.close();
    expect(await inFlight(c.org)).toBe(2);
    expect(await h.s.runtime.deps.redis.zscore(cell().scheduler.keys.named.leases, c.id)).toBeNull();
  }

  it('A claimed, stalled; B fetched and claimed; both end before a model call: the charge comes back once, the slot is freed once', async () => {
    const c = await threeDispatched('both-unspent');
    const [a, b] = [gate(), gate()];
    const jobA = await fetch(c.id, 'ta-1');
    expect(await a.admit(jobA, 'ta-1')).toBe('run');
    await stall(c.id);
    const jobB = await fetch(c.id, 'tb-1');
    // The one slot, held by the job whichever attempt runs: not counted twice, not given up.
    expect(await b.admit(jobB, 'tb-1')).toBe('run_unpaid');
    expect(await inFlight(c.org)).toBe(3);
    endsUnspent(a, jobA);
    endsUnspent(b, jobB);
    await completes(b, jobB, 'tb-1');
    await refused(jobA, 'ta-1');
    await settled(c, a, b);
    const back = await c.givenBack();
    expect(back.requests).toBeCloseTo(1, 3);
    expect(back.tokens).toBeCloseTo(c.est, 3);
  });

  it('both call the model: the first claim\'s call is the prepaid one, the second\'s request and tokens are charged in full', async () => {
    const c = await threeDispatched('both-call');
    const [a, b] = [gate(), gate()];
    const jobA = await fetch(c.id, 'ta-2');
    const first = await a.admit(jobA, 'ta-2');
    await stall(c.id);
    const jobB = await fetch(c.id, 'tb-2');
    const second = await b.admit(jobB, 'tb-2');
    expect([first, second]).toEqual(['run', 'run_unpaid']);
    const [usedA, usedB] = [Math.floor(c.est / 3), Math.floor(c.est / 2)];
    await callsModel(a, c, first, usedA);
    await callsModel(b, c, second, usedB);
    // B finished first this time: A's completion, after it, is refused all the same.
    await completes(b, jobB, 'tb-2');
    await refused(jobA, 'ta-2');
    await settled(c, a, b);
    // Two requests spent for one dispatched: the dispatch's and B's own; the tokens are what the two calls used.
    const back = await c.givenBack();
    expect(back.requests).toBeCloseTo(-1, 3);
    expect(back.tokens).toBeCloseTo(c.est - usedA - usedB, 3);
  });

  it('A fetched, stalled before its claim; B claimed first: B settles the charge, A\'s later claim is the unpaid one', async () => {
    const c = await threeDispatched('late-claim');
    const [a, b] = [gate(), gate()];
    const jobA = await fetch(c.id, 'ta-3');
    await stall(c.id);
    const jobB = await fetch(c.id, 'tb-3');
    expect(await b.admit(jobB, 'tb-3')).toBe('run');
    expect(await a.admit(jobA, 'ta-3')).toBe('run_unpaid');
    expect(await inFlight(c.org)).toBe(3);
    endsUnspent(a, jobA);
    endsUnspent(b, jobB);
    await refused(jobA, 'ta-3');
    await completes(b, jobB, 'tb-3');
    await settled(c, a, b);
    const back = await c.givenBack();
    expect(back.requests).toBeCloseTo(1, 3);
    expect(back.tokens).toBeCloseTo(c.est, 3);
  });

  it('A ended before B claimed (its completion refused: no release): the slot goes once, when B finishes', async () => {
    const c = await threeDispatched('a-first');
    const [a, b] = [gate(), gate()];
    const jobA = await fetch(c.id, 'ta-4');
    expect(await a.admit(jobA, 'ta-4')).toBe('run');
    await stall(c.id);
    endsUnspent(a, jobA);
    // BullMQ refuses the completion of an attempt whose lock lapsed: no 'completed' or 'failed' event, so A's gate
    // releases nothing, and the slot stays the job's for its next attempt.
    await refused(jobA, 'ta-4');
    await a.close();
    const jobB = await fetch(c.id, 'tb-4');
    expect(await b.admit(jobB, 'tb-4')).toBe('run_unpaid');
    expect(await inFlight(c.org)).toBe(3);
    endsUnspent(b, jobB);
    await completes(b, jobB, 'tb-4');
    await settled(c, a, b);
    // A late release of the same id (a gate that released it twice) finds no lease: nothing more is freed.
    expect((await cell().scheduler.release([c.id])).freed).toBe(0);
    expect(await inFlight(c.org)).toBe(2);
    const back = await c.givenBack();
    expect(back.requests).toBeCloseTo(1, 3);
    expect(back.tokens).toBeCloseTo(c.est, 3);
  });

  it('a job claimed once is unchanged: its one claim takes the charge and gives it back once', async () => {
    const c = await threeDispatched('once');
    const a = gate();
    const job = await fetch(c.id, 'ta-5');
    expect(await a.admit(job, 'ta-5')).toBe('run');
    endsUnspent(a, job);
    endsUnspent(a, job);
    await completes(a, job, 'ta-5');
    await settled(c, a);
    const back = await c.givenBack();
    expect(back.requests).toBeCloseTo(1, 3);
    expect(back.tokens).toBeCloseTo(c.est, 3);
  });
  it("an attempt whose outcome BullMQ refused (its lock lost) is forgotten when its processor ends: the release of the process's last job carries its corrections at once", async () => {
    const c = await threeDispatched('refused-run');
    // Process A's gate, with the real processor around it, and what A's gate sends to the dispatcher. Corrections
    // summed for a minute: only "no attempt runs here any more" sends them with a release.
    const { scheduler } = cell();
    const sent: Array<{ released: string[]; corrections: number }> = [];
    const a = gate({
      scheduler: {
        claim: (id, progress, o) => (sent.push({ released: o?.release ?? [], corrections: o?.correct?.length ?? 0 }), scheduler.claim(id, progress, o)),
        release: (ids, o) => (sent.push({ released: ids, corrections: o?.correct?.length ?? 0 }), scheduler.release(ids, o)),
        enqueue: (...args) => scheduler.enqueue(...args),
        repark: (...args) => scheduler.repark(...args),
        blockModel: (...args) => scheduler.blockModel(...args),
        takeRequest: (...args) => scheduler.takeRequest(...args),
        giveBackRequest: (...args) => scheduler.giveBackRequest(...args),
      },
      correctionBatchMs: 60_000,
    });
    // The chain answers at once (no model call: an attempt that ran 'run' gives its dispatch's charge back).
    const answer = async (): Promise<AgentResult> => ({ success: true, data: {}, tokensUsed: { input: 0, output: 0 }, costUsd: 0, durationMs: 0, model: c.model });
    // The runs A's buffer ask counts (worker-service's `onFinished`: the process's rate that sizes its dispatch buffer).
    const finishedRuns: string[] = [];
    const processA = createAgentProcessor({ agents, chain: answer, runs: { record: async () => undefined }, models: models(), logger: createLogger({ level: 'silent' }), gate: a, onFinished: (job) => void finishedRuns.push(job.id!) });
    const b = gate();

    // A fetched the job and stalled before its claim; B fetched it again and claimed it first (the charge is B's).
    const jobA = await fetch(c.id, 'ta-6');
    await stall(c.id);
    const jobB = await fetch(c.id, 'tb-6');
    expect(await b.admit(jobB, 'tb-6')).toBe('run');
    // A's attempt runs through the processor ('run_unpaid': it settles nothing), and ends; BullMQ refuses its
    // completion (no 'completed' or 'failed' event: A's gate is told nothing more, and releases nothing).
    await processA(jobA, 'ta-6');
    await refused(jobA, 'ta-6');
    expect(a.runningAttempts()).toBe(0);
    // It took a job from A's wait list and ran it to its end: A's buffer counts it, once (BullMQ's completed and
    // failed events, which counted runs until 2026-12-07, never come for it).
    expect(finishedRuns).toEqual([c.id]);
    endsUnspent(b, jobB);
    await completes(b, jobB, 'tb-6');

    // A's next job runs alone in A, gives its dispatch's charge back (a correction) and completes: nothing else runs
    // in A, so its release carries the correction at once (the refused attempt counted as running until 2026-12-07,
    // and the correction waited for a claim that never came, or went in a call of its own later).
    const jobC = await fetch(c.others[0], 'ta-6c');
    await processA(jobC, 'ta-6c');
    await completes(a, jobC, 'ta-6c');
    expect(finishedRuns).toEqual([c.id, jobC.id]);
    await vi.waitFor(() => expect(sent.findIndex((x) => x.released.includes(jobC.id!))).toBeGreaterThan(-1), POLL);
    const upTo = sent.slice(0, sent.findIndex((x) => x.released.includes(jobC.id!)) + 1);
    expect(upTo.reduce((n, x) => n + x.corrections, 0)).toBeGreaterThan(0);
    expect(a.runningAttempts()).toBe(0);

    await Promise.all([a.close(), b.close()]);
    // The job's one slot went once (B's release), the next job's with A's: the org's third job holds the last one.
    expect(await inFlight(c.org)).toBe(1);
    expect(await h.s.runtime.deps.redis.zscore(scheduler.keys.named.leases, c.id)).toBeNull();
    // One dispatch charge each, given back once each (B's for the stalled job, A's for the next one).
    const back = await c.givenBack();
    expect(back.requests).toBeCloseTo(2, 3);
    expect(back.tokens).toBeCloseTo(2 * c.est, 3);
  });
  it("a stalled attempt's retryable failure, refused, noted nothing that outlives it: the attempt that fetched it again in the same process completes and frees the slot", async () => {
    const c = await threeDispatched('refused-retry');
    const a = gate();
    retryingOn = a;
    // Process A runs both attempts: the first stalled after its claim, and A fetched the job again.
    const first = await fetch(c.id, 'ta-8');
    expect(await a.admit(first, 'ta-8')).toBe('run');
    await stall(c.id);
    const again = await fetch(c.id, 'ta-8b');
    expect(await a.admit(again, 'ta-8b')).toBe('run_unpaid');
    // The first attempt fails with a retry: BullMQ's backoff strategy notes its backoff with A's gate, then refuses
    // the failure (its lock is the second fetch's now): no 'failed' event.
    endsUnspent(a, first);
    a.ended(first);
    await expect(first.moveToFailed(new Error('retryable'), 'ta-8')).rejects.toThrow(/Lock mismatch|Missing lock/);
    // The second completes: its slot goes back (a retry noted by id until 2026-12-07 made this a repark into the
    // retry's backoff, the job's record laned again and its slot held for a job BullMQ has completed).
    endsUnspent(a, again);
    a.ended(again);
    await completes(a, again, 'ta-8b');
    await settled(c, a);
    expect(await h.s.runtime.deps.redis.exists(`${cell().scheduler.keys.named.jobPrefix}${c.id}`)).toBe(0);
    const back = await c.givenBack();
    expect(back.requests).toBeCloseTo(1, 3);
    expect(back.tokens).toBeCloseTo(c.est, 3);
    retryingOn = undefined;
  });
  it("the claim stamp reads '1' after any number of claims: what processes from before the claims were told apart take for claimed", async () => {
    const c = await threeDispatched('stamp');
    const record = `${cell().scheduler.keys.named.jobPrefix}${c.id}`;
    // An older process's cancel (fair-release.lua refundDispatch, 2026-12-06) gave the charge back unless `c` == '1':
    // a '2' left by a second claim made it give back what the first claim's attempt settles too.
    const stamp = () => h.s.runtime.deps.redis.hget(record, 'c');
    expect(await stamp()).toBe('0');
    const [a, b, d] = [gate(), gate(), gate()];
    const jobA = await fetch(c.id, 'ta-7');
    expect(await a.admit(jobA, 'ta-7')).toBe('run');
    expect(await stamp()).toBe('1');
    await stall(c.id);
    const jobB = await fetch(c.id, 'tb-7');
    expect(await b.admit(jobB, 'tb-7')).toBe('run_unpaid');
    expect(await stamp()).toBe('1');
    // Stalled once more, fetched a third time: still taken, still '1'.
    await stall(c.id);
    const jobD = await fetch(c.id, 'td-7');
    expect(await d.admit(jobD, 'td-7')).toBe('run_unpaid');
    expect(await stamp()).toBe('1');
    endsUnspent(a, jobA);
    endsUnspent(b, jobB);
    endsUnspent(d, jobD);
    await refused(jobA, 'ta-7');
    await refused(jobB, 'tb-7');
    await completes(d, jobD, 'td-7');
    await settled(c, a, b, d);
    const back = await c.givenBack();
    expect(back.requests).toBeCloseTo(1, 3);
    expect(back.tokens).toBeCloseTo(c.est, 3);
  });
});
