import { randomUUID } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { queueShards } from '../src/shared/core/queue-shards.js';
import { startStack, type Stack } from './helpers/stack.js';
import { riskJob } from './helpers/ops.js';
import { until, waitsTimeout, POLL } from './helpers/wait.js';

/**
 * With queue shards, a provider 429 (or an open breaker) pauses the model's lanes for every org, whatever its
 * shard: a provider's limit, like its breaker, is not a shard's. Each shard's dispatcher keeps its own model
 * blocks, so the block goes to every one.
 */
describe('provider 429 with queue shards: the model pauses in every shard', () => {
  let s: Stack;
  beforeAll(async () => {
    s = await startStack({ QUEUE_SHARDS: '2', ALLOWED_MODELS: 'gemini-2.0-flash' }, { worker: true });
  });
  afterAll(async () => {
    await s?.close();
  });

  it('a per-minute 429 in one shard holds another shard\'s org on that model: it never reaches Gemini', async () => {
    const model = 'gemini-2.0-flash';
    const layout = queueShards(s.cfg.QUEUE_PREFIX, 2);
    let otherOrg = '';
    while (!otherOrg || layout.ofOrg(otherOrg) === layout.ofOrg(s.orgId)) otherOrg = `org_${randomUUID().slice(0, 8)}`;
    const auths = [s.auth, { authorization: `Bearer ${await s.newKey(otherOrg)}` }];
    const post = async (marker: string, auth: { authorization: string }) => {
      const res = await s.app.inject({ method: 'POST', url: '/v1/jobs', headers: auth, payload: { ...riskJob(marker), options: { model } } });
      expect(res.statusCode).toBe(202);
      return res.json().id as string;
    };
    const reason = async (id: string, auth: { authorization: string }) => (await s.app.inject({ method: 'GET', url: `/v1/jobs/${id}`, headers: auth })).json().waitingFor?.reason;

    s.emulator.script({ status: 429, quota: 'per_minute', retryAfterS: 600, match: { model } });
    const first = await post('shard-minute-long', auths[0]);
    await until('the first job waits for the provider', async () => (await reason(first, auths[0])) === 'provider_rate_limited');
    const other = await post('shard-minute-other', auths[1]);
    await until('the other shard\'s org waits for the model', async () => (await reason(other, auths[1])) === 'provider_rate_limited');
    expect(s.emulator.calls().filter((c) => c.model === model)).toHaveLength(1);
  }, waitsTimeout(POLL.timeout, POLL.timeout));
});
