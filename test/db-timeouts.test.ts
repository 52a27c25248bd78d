import type pg from 'pg';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { EDBUNAVAILABLE, PromptBuildError } from '../src/shared/core/errors.js';
import { classify, codeOf } from '../src/shared/core/outcomes.js';
import { createPool } from '../src/shared/infra/db/pool.js';
import { createQuotaChecker } from '../src/shared/infra/db/quotas.js';
import { createVectorSearch } from '../src/shared/knowledge/vector-search.js';
import { createQuotaGuard } from '../src/workers/guards/index.js';
import { guardContext, okResult } from './helpers/guard-context.js';
import { createHashEmbed } from './helpers/hash-embed.js';
import { hungPostgres } from './helpers/hung-postgres.js';
import { startStack, type Stack } from './helpers/stack.js';
import { POLL, within, waitsTimeout } from './helpers/wait.js';

/** Short bounds, so each failure below comes in well under the `within` bound a hang would overrun. */
const SHORT = { connectMs: 300, queryMs: 300 };
/** What a bounded failure may take on a loaded machine: far below a hang, far above 300 + 300 ms. */
const BOUND_MS = 8000;

const failureOf = (p: Promise<unknown>): Promise<unknown> =>
  p.then(
    () => undefined,
    (err: unknown) => err,
  );

describe('a Postgres that never answers: failures bounded by PG_CONNECT_TIMEOUT_MS / PG_QUERY_TIMEOUT_MS, coded EDBUNAVAILABLE', () => {
  for (const mode of ['silent', 'stalled'] as const) {
    it(`a query through the pool rejects within the bound and leaves no connection behind (${mode === 'silent' ? 'the connect never answered' : 'the query never answered'})`, async () => {
      const server = await hungPostgres(mode);
      const pool = createPool(server.url, { max: 2, timeouts: SHORT });
      try {
        const err = await within(failureOf(pool.query('SELECT 1')), BOUND_MS, 'the query to fail');
        expect(codeOf(err)).toBe(EDBUNAVAILABLE);
        expect((err as Error).message).toMatch(mode === 'silent' ? /connection timeout/ : /Query read timeout/);
        // The connection that timed out is dropped, not handed to the next caller.
        expect(pool.totalCount).toBe(0);
        await vi.waitFor(() => expect(server.open()).toBe(0), POLL);
      } finally {
        await server.close();
        await pool.end();
      }
    }, waitsTimeout(BOUND_MS, POLL.timeout));
  }

  it('a query waiting for a connection of a full pool rejects within the bound too', async () => {
    const server = await hungPostgres('stalled');
    const pool = createPool(server.url, { max: 1, timeouts: SHORT });
    try {
      // The first takes the one connection (its query never answered); the second waits for it, as long as a connect.
      const [first, second] = await within(Promise.all([failureOf(pool.query('SELECT 1')), failureOf(pool.query('SELECT 2'))]), BOUND_MS, 'both queries to fail');
      expect((first as Error).message).toMatch(/Query read timeout/);
      expect((second as Error).message).toMatch(/timeout exceeded when trying to connect/);
      expect([codeOf(first), codeOf(second)]).toEqual([EDBUNAVAILABLE, EDBUNAVAILABLE]);
    } finally {
      await server.close();
      await pool.end();
    }
  });

  it('in a worker: the quota guard runs the job, and a knowledge search failure delays the job (no attempt used), never fails it', async () => {
    const server = await hungPostgres('stalled');
    const pool = createPool(server.url, { max: 2, timeouts: SHORT });
    try {
      const quotas = createQuotaChecker({ pool });
      const guard = createQuotaGuard((orgId) => quotas.check(orgId), 0);
      const ran = await within(
        guard(guardContext({ orgId: 'org_hung_pg' }), async () => okResult('ran')),
        BOUND_MS,
        'the quota guard to give up on the budget read',
      );
      expect(ran).toMatchObject({ data: 'ran' });

      const search = createVectorSearch({ pool, embed: createHashEmbed() });
      const err = await within(failureOf(search.search({ query: 'anything', orgId: 'org_hung_pg', tables: ['chat_facts'] })), BOUND_MS, 'the knowledge search to fail');
      // What the agent call makes of a prompt whose retrieval failed (call-agent.ts), and its fate: the job waits
      // out the outage (test/db-unavailable-delay.test.ts runs it through a worker).
      expect(codeOf(err)).toBe(EDBUNAVAILABLE);
      expect(classify(new PromptBuildError(err))).toMatchObject({ kind: 'delay', reason: 'database_unavailable' });
    } finally {
      await server.close();
      await pool.end();
    }
  });
});

/**
 * The runtime's pool, aimed at the suite's PGlite while the stack starts (it reads org plans then), and at a hung
 * server once `use` is called: every store the runtime built holds this one object.
 */
function switchablePool() {
  let current: pg.Pool;
  const pool = new Proxy({} as pg.Pool, {
    get(_target, key) {
      const value: unknown = Reflect.get(current, key, current);
      return typeof value === 'function' ? (value as (...a: unknown[]) => unknown).bind(current) : value;
    },
  });
  return {
    wrap(real: pg.Pool) {
      current = real;
      return pool;
    },
    use(next: pg.Pool) {
      current = next;
    },
  };
}

describe('the API over a Postgres that never answers', () => {
  const adminToken = 'db-timeouts-admin-token-0123456789';
  const switchable = switchablePool();
  let s: Stack;
  let real: pg.Pool;
  const hung: Array<Awaited<ReturnType<typeof hungPostgres>>> = [];
  const pools: pg.Pool[] = [];
  beforeAll(async () => {
    s = await startStack({ ADMIN_TOKEN: adminToken }, { pool: (p) => ((real = p), switchable.wrap(p)) });
  });
  afterAll(async () => {
    if (real) switchable.use(real);
    // The servers first: their connections closing ends what the pools still wait on.
    for (const h of hung) await h.close();
    for (const p of pools) await p.end();
    await s?.close();
  });

  async function aimAt(mode: 'silent' | 'stalled', timeouts: { connectMs: number; queryMs: number }, max = 10) {
    const server = await hungPostgres(mode);
    hung.push(server);
    const pool = createPool(server.url, { max, timeouts });
    pools.push(pool);
    switchable.use(pool);
    return { pool, server };
  }

  /** Back to the real database: the hung server closes first, which settles what its pool still waits on. */
  async function recover(server: { close(): Promise<void> }) {
    await server.close();
    switchable.use(real);
    await vi.waitFor(async () => expect((await s.app.inject({ method: 'GET', url: '/readyz' })).statusCode).toBe(200), POLL);
    expect((await s.app.inject({ method: 'GET', url: '/v1/jobs', headers: s.auth })).statusCode).toBe(200);
  }

  for (const mode of ['silent', 'stalled'] as const) {
    it(`a route that needs the database answers 503 with a JSON body within the bound (${mode})`, async () => {
      const { server } = await aimAt(mode, SHORT);
      // A member key is checked in Postgres (AUTH_CACHE_TTL_MS is 0 in tests); the ADMIN_TOKEN is not, and the
      // org plan route then reads Postgres itself.
      for (const req of [
        { method: 'GET' as const, url: '/v1/jobs', headers: s.auth },
        { method: 'GET' as const, url: '/admin/orgs/org_hung_pg/plan', headers: { authorization: `Bearer ${adminToken}` } },
      ]) {
        const res = await within(s.app.inject(req), BOUND_MS, `${req.url} to answer`);
        expect(res.statusCode, res.body).toBe(503);
        expect(res.headers['content-type']).toMatch(/application\/json/);
        expect(res.json()).toEqual({ error: 'database unavailable, retry shortly' });
        expect(res.headers['retry-after']).toBe('1');
      }
      await recover(server);
    }, waitsTimeout(BOUND_MS, BOUND_MS, POLL.timeout));
  }

  for (const mode of ['silent', 'stalled'] as const) {
    it(`/readyz probes hold at most one connection, never the pool (${mode})`, async () => {
      // Bounds far longer than the test: without its own, a probe /readyz gave up on would keep its connection.
      const max = 3;
      const { pool, server } = await aimAt(mode, { connectMs: 120_000, queryMs: 120_000 }, max);
      for (let round = 0; round < 2; round++) {
        const answers = await Promise.all(Array.from({ length: 2 * max }, () => s.app.inject({ method: 'GET', url: '/readyz' })));
        for (const res of answers) {
          expect(res.statusCode).toBe(503);
          expect(res.json().checks.database).not.toBe('ok');
          expect(res.json().checks.redis).toBe('ok');
        }
        expect(pool.waitingCount).toBe(0);
        expect(pool.totalCount).toBeLessThanOrEqual(1);
      }
      // A query that got its connection (the server answered the connect) is dropped by the probe's own bound.
      if (mode === 'stalled') await vi.waitFor(() => expect(pool.totalCount).toBe(0), POLL);
      await recover(server);
    }, waitsTimeout(POLL.timeout, POLL.timeout));
  }
});
