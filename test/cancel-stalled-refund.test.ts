import type { Job } from 'bullmq';
import { describe, expect, it } from 'vitest';
import type { AgentJobData, AgentResult } from '../src/shared/core/types.js';
import { estimateTokens } from '../src/shared/queue/estimate-tokens.js';
import { randomOrg } from './helpers/env.js';
import { useStalledGates } from './helpers/stalled-gates.js';

/**
 * A cancel (or a clean of the wait list) of a job a worker had fetched and claimed, whose lock then lapsed (its
 * worker died or its event loop stalled) so that BullMQ's stalled check moved it back to the wait list: the
 * dispatcher sees it unlocked in the wait list, as a job never fetched. Its dispatch charge (the org's request and
 * token estimate) is the claim's to settle: the attempt gives it back when it ends before its model call, and
 * keeps it (corrected by the call's usage) when it called the model. The cancel gives it back only when no claim
 * took it. The worker here is a BullMQ worker that does not run its processor and the real fair gate: each
 * attempt does by hand what the processor does at that point, so each case happens every time.
 */
const RPM = 3;

describe('cancelling a stalled job gives its dispatch charge back once', () => {
  const h = useStalledGates();
  const { cell, gate, stall } = h;

  /**
   * A fresh org limited to RPM requests a minute and to four jobs' estimates of tokens, with three jobs dispatched:
   * the one the test stalls (fetched by the worker), and two more that keep its buckets below their capacity even
   * after two refunds (a refund into a full bucket would not show).
   */
  async function threeDispatched(marker: string) {
    const org = randomOrg();
    const key = await h.s.newKey(org);
    const input = { startup: { name: `${marker} Co`, industry: 'logistics', stage: 'seed', description: 'A job whose worker stalls' } };
    const est = estimateTokens(input);
    const { scheduler } = cell();
    await scheduler.setPlan(org, { rpm: { pro: RPM, flash: RPM }, tpm: 4 * est });
    const ids: string[] = [];
    for (let i = 0; i < 3; i++) {
      const res = await h.s.app.inject({ method: 'POST', url: '/v1/jobs', headers: { authorization: `Bearer ${key}` }, payload: { agent: 'RiskAnalyzer', action: 'analyze_risks', input } });
      expect(res.statusCode).toBe(202);
      ids.push(res.json().id as string);
    }
    // This process has no worker: a worker's dispatch, with room for the three. An ask of 16: the wait list then
    // lacks a batch (8) whatever the earlier tests left in it (their other jobs, dispatched, never fetched); at 4,
    // beside the last test's worker still registered at 4, a list holding two lacked 6 of 8: no batch once a target
    // under 9 is refilled at all but one job.
    await scheduler.dispatch({ id: `w-${marker}`, concurrency: 4, ask: 16, ttlMs: 60_000 });
    const records = await Promise.all(ids.map((id) => h.s.runtime.deps.redis.hgetall(`${scheduler.keys.named.jobPrefix}${id}`)));
    for (const r of records) expect(r).toMatchObject({ o: org, st: 'lease', e: String(est) });
    const record = records[0];
    const model = record.m;
    // The worker's fetch of the job (an earlier test's jobs, older in the wait list, come first: left held).
    let job: Job<AgentJobData, AgentResult> | undefined;
    for (let i = 0; i < 10 && job?.id !== ids[0]; i++) job = await h.worker.getNextJob(`t-${marker}`, { block: false });
    expect(job?.id).toBe(ids[0]);
    const rpmKey = `${scheduler.keys.named.tbRpmOrgPrefix}${org}:${model}`;
    const tpmKey = `${scheduler.keys.named.tbTpmOrgPrefix}${org}:${model}`;
    const read = async (k: string) => {
      const [tokens, ts] = await h.s.runtime.deps.redis.hmget(k, 'tokens', 'ts');
      return { tokens: Number(tokens), ts: Number(ts) };
    };
    const snapshot = async () => ({ rpm: await read(rpmKey), tpm: await read(tpmKey) });
    // Three requests and three estimates taken: a bucket is below its capacity by more than two refunds until it
    // refills one more (15 s and more), so none comes back to full in this test (a full bucket is deleted: NaN).
    const before = await snapshot();
    /**
     * What was given back to the org's buckets since `before`: each level's change less what the bucket refilled
     * meanwhile (capacity per minute, counted between the two writes' times), so exact whatever the test's pace.
     */
    const givenBack = async () => {
      const after = await snapshot();
      const net = (b: { tokens: number; ts: number }, a: { tokens: number; ts: number }, perMin: number) => a.tokens - b.tokens - ((a.ts - b.ts) * perMin) / 60_000;
      return { requests: net(before.rpm, after.rpm, RPM), tokens: net(before.tpm, after.tpm, 4 * est) };
    };
    return { org, id: ids[0], job: job!, token: `t-${marker}`, est, model, givenBack };
  }

  const inFlight = async (org: string) => (await cell().scheduler.orgStats(org)).inFlight;

  /** What the dispatch charged that came back to the org's buckets (net of refill), and the org's other two slots held. */
  async function expectGivenBack(c: { org: string; givenBack(): Promise<{ requests: number; tokens: number }> }, want: { requests: number; tokens: number }) {
    const back = await c.givenBack();
    expect(back.requests).toBeCloseTo(want.requests, 3);
    expect(back.tokens).toBeCloseTo(want.tokens, 3);
    expect(await inFlight(c.org)).toBe(2);
  }

  /** The DELETE of the stalled job: it reads waiting, is taken from its lane's slot and removed. */
  async function cancelStalled(c: { id: string; org: string }) {
    await stall(c.id);
    expect(await cell().queue.getJobState(c.id)).toBe('waiting');
    const del = await h.s.app.inject({ method: 'DELETE', url: `/v1/jobs/${c.id}`, headers: { authorization: `Bearer ${await h.s.newKey(c.org)}` } });
    expect(del.statusCode).toBe(200);
    expect(del.json()).toMatchObject({ state: 'cancelled' });
  }

  it('claimed, stalled before its model call: the attempt hears the cancel and gives the charge back, the cancel does not', async () => {
    const c = await threeDispatched('before-call');
    const g = gate();
    expect(await g.admit(c.job, c.token)).toBe('run');
    await cancelStalled(c);
    // The processor's refund of an attempt that ends before its model call (the cancel's abort here).
    g.refundUnspent(c.job);
    // Sent with the gate's next call (a timer here: the job is gone, so no release follows its end).
    await g.close();
    await expectGivenBack(c, { requests: 1, tokens: c.est });
  });

  it('claimed, stalled in its model call: the request stays spent and the tokens are corrected by the call\'s usage alone', async () => {
    const c = await threeDispatched('in-call');
    const g = gate();
    expect(await g.admit(c.job, c.token)).toBe('run');
    await cancelStalled(c);
    // The rate-limit guard spent the prepaid charge on the call; the aborted call was billed `used` tokens, which
    // correct the estimate the dispatch charged (rate-limit-guard settle), and no refund follows.
    const used = Math.floor(c.est / 3);
    g.correct(c.org, c.model, { orgTokens: used - c.est, modelTokens: used - c.est, requests: 0 });
    await g.close();
    await expectGivenBack(c, { requests: 0, tokens: c.est - used });
  });

  it('fetched, stalled before its claim (its worker died): the cancel gives the charge back, once', async () => {
    const c = await threeDispatched('no-claim');
    await cancelStalled(c);
    await expectGivenBack(c, { requests: 1, tokens: c.est });
  });

  it('claimed, stalled, then cleaned from the wait list (Bull Board): the attempt\'s refund is the only one', async () => {
    const c = await threeDispatched('cleaned');
    const g = gate();
    expect(await g.admit(c.job, c.token)).toBe('run');
    await stall(c.id);
    // BullMQ's clean of the wait list removes it, and the board tells the dispatcher, with a refund (wait list).
    await cell().queue.remove(c.id);
    expect(await cell().scheduler.removed([c.id], { refund: true })).toEqual({ freed: 1, forgotten: 1 });
    g.refundUnspent(c.job);
    await g.close();
    await expectGivenBack(c, { requests: 1, tokens: c.est });
  });
});
