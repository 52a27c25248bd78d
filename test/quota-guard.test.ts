import { describe, expect, it } from 'vitest';
import { createQuotaGuard } from '../src/workers/guards/index.js';
import { DelayJobError } from '../src/workers/middleware.js';
import type { QuotaDecision } from '../src/shared/infra/db/quotas.js';
import { guardContext, okResult } from './helpers/guard-context.js';

describe('quota guard while Postgres is unreachable', () => {
  for (const cacheMs of [0, 5000]) {
    it(`an org's last decision stands and an org never read runs; no job fails on the outage (QUOTA_CACHE_MS ${cacheMs})`, async () => {
      let down = false;
      const decisions: Record<string, QuotaDecision> = { over: { allowed: false, reason: 'monthly budget of $1 reached', retryAfterS: 60 }, under: { allowed: true } };
      const check = async (orgId: string) => {
        if (down) throw Object.assign(new Error('connect ECONNREFUSED 127.0.0.1:5432'), { code: 'ECONNREFUSED' });
        return decisions[orgId] ?? { allowed: true };
      };
      // The cache's clock, moved past its window below: the decisions are then read again (and the reads fail).
      const clock = { t: 1000, now: () => clock.t };
      const guard = createQuotaGuard(check, cacheMs, clock);
      const run = (orgId: string) => guard(guardContext({ orgId }), async () => okResult('ran'));
      await expect(run('over')).rejects.toBeInstanceOf(DelayJobError);
      await expect(run('under')).resolves.toMatchObject({ data: 'ran' });
      down = true;
      clock.t += cacheMs + 1;
      // What a read would now say differs: only a stale decision kept refuses.
      decisions.over = { allowed: true };
      await expect(run('over')).rejects.toBeInstanceOf(DelayJobError);
      await expect(run('under')).resolves.toMatchObject({ data: 'ran' });
      await expect(run('never-read')).resolves.toMatchObject({ data: 'ran' });
    });
  }
});
