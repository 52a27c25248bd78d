import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { UNTHROTTLED } from './helpers/faults.js';
import { randomOrg } from './helpers/env.js';
import { marker, riskJob } from './helpers/ops.js';
import { openApiPath, registeredRoutes, type RegisteredRoute } from './helpers/route-list.js';
import { startStack, type Stack } from './helpers/stack.js';

const ADMIN_TOKEN = 'roles-walk-operator-token-5f1c0a';

type Role = 'public' | 'member' | 'org-admin' | 'operator';
/** Every kind of caller: none, each role of the home org, another org's org-admin, and the operator both ways. */
const CALLERS = ['none', 'member', 'org-admin', 'foreign org-admin', 'operator key', 'ADMIN_TOKEN'] as const;
type Caller = (typeof CALLERS)[number];
const roleOf: Record<Exclude<Caller, 'none'>, Exclude<Role, 'public'>> = {
  member: 'member',
  'org-admin': 'org-admin',
  'foreign org-admin': 'org-admin',
  'operator key': 'operator',
  ADMIN_TOKEN: 'operator',
};

/**
 * The permission table of the issue, written out here on its own: who each route admits. The test checks
 * the route table declares exactly this (through the OpenAPI document) and that the server enforces it.
 */
function admitted(c: Case): Array<Exclude<Role, 'public'>> {
  if (c.role === 'public') return ['member', 'org-admin', 'operator'];
  if (c.role === 'member') return ['member', 'org-admin'];
  if (c.role === 'org-admin') return c.operatorSeesEveryOrg ? ['org-admin', 'operator'] : ['org-admin'];
  return ['operator'];
}

interface Fixtures {
  job: string;
  flow: string;
  run: string;
  /** A DLQ entry of the home org that no admitted call consumes (read, and probed by the foreign org). */
  dlqKept: string;
  dlq(): Promise<string>;
  /** A delayed job of the home org that nobody cancels, and fresh ones to cancel. */
  delayedKept: string;
  delayed(): Promise<string>;
  /** A key of the home org that nobody revokes, and fresh ones to revoke. */
  keyKept: string;
  key(): Promise<string>;
  asset: string;
  marker: string;
}

interface Case {
  /** The role the issue gives this route. */
  role: Role;
  operatorSeesEveryOrg?: true;
  /** The request; `consumes` is true when the call is expected to succeed and may use a resource up. */
  request(f: Fixtures, consumes: boolean): Promise<Req> | Req;
  /** The URL names a resource of the home org: another org's caller must get 404, not 403 or 2xx. */
  homeResource?: true;
  /** What counts as success for an admitted caller; 2xx unless said. */
  ok?: (status: number) => boolean;
}
type Req = { url: string; payload?: Record<string, unknown> };

const job = (m: string) => riskJob(m);
const docsOk = (s: number) => s >= 200 && s < 400;
/** Bull Board's own API: past the role check, any answer of the plugin (some need a body it validates). */
const boardOk = (s: number) => s !== 401 && s !== 403 && s < 500;

/** One case per route the app registers, keyed `METHOD path` as fastify prints it. */
const CASES: Record<string, Case> = {
  'GET /healthz': { role: 'public', request: () => ({ url: '/healthz' }) },
  'GET /readyz': { role: 'public', request: () => ({ url: '/readyz' }) },
  'GET /openapi.json': { role: 'public', request: () => ({ url: '/openapi.json' }) },
  'GET /docs': { role: 'public', request: () => ({ url: '/docs' }), ok: docsOk },
  'GET /docs/': { role: 'public', request: () => ({ url: '/docs/' }), ok: docsOk },
  'GET /docs/static/index.html': { role: 'public', request: () => ({ url: '/docs/static/index.html' }), ok: docsOk },
  'GET /docs/static/swagger-initializer.js': { role: 'public', request: () => ({ url: '/docs/static/swagger-initializer.js' }), ok: docsOk },
  'GET /docs/*': { role: 'public', request: () => ({ url: '/docs/static/swagger-ui.css' }), ok: docsOk },
  'GET /docs/json': { role: 'public', request: () => ({ url: '/docs/json' }), ok: docsOk },
  'GET /docs/yaml': { role: 'public', request: () => ({ url: '/docs/yaml' }), ok: docsOk },

  // member: its org's jobs, streams, flows, pipelines, usage (and the catalog and search that serve them).
  'GET /v1/agents': { role: 'member', request: () => ({ url: '/v1/agents' }) },
  'POST /v1/jobs': { role: 'member', request: () => ({ url: '/v1/jobs', payload: job(marker()) }) },
  'POST /v1/jobs/bulk': { role: 'member', request: () => ({ url: '/v1/jobs/bulk', payload: { jobs: [job(marker()), job(marker())] } }) },
  'GET /v1/jobs': { role: 'member', request: () => ({ url: '/v1/jobs' }) },
  'GET /v1/jobs/:id': { role: 'member', homeResource: true, request: (f) => ({ url: `/v1/jobs/${f.job}` }) },
  'DELETE /v1/jobs/:id': { role: 'member', homeResource: true, request: async (f, consumes) => ({ url: `/v1/jobs/${consumes ? await f.delayed() : f.delayedKept}` }) },
  'GET /v1/jobs/:id/stream': { role: 'member', homeResource: true, request: (f) => ({ url: `/v1/jobs/${f.job}/stream` }) },
  'POST /v1/stream': { role: 'member', request: () => ({ url: '/v1/stream', payload: job(marker()) }) },
  'POST /v1/flows/parallel': { role: 'member', request: () => ({ url: '/v1/flows/parallel', payload: { tasks: [job(marker())] } }) },
  'POST /v1/flows/dashboard': { role: 'member', request: () => ({ url: '/v1/flows/dashboard', payload: { startupId: marker() } }) },
  'GET /v1/flows/:id': { role: 'member', homeResource: true, request: (f) => ({ url: `/v1/flows/${f.flow}` }) },
  // Idempotent: the home flow (finished or not) answers 2xx each time, and stays readable.
  'POST /v1/flows/:id/cancel': { role: 'member', homeResource: true, request: (f) => ({ url: `/v1/flows/${f.flow}/cancel` }) },
  'GET /v1/pipelines': { role: 'member', request: () => ({ url: '/v1/pipelines' }) },
  'POST /v1/pipelines/wizard_completion': {
    role: 'member',
    request: () => ({ url: '/v1/pipelines/wizard_completion', payload: { input: { companyName: `Walk ${marker()}`, answers: [{ question: 'What do you build?', answer: 'robots' }] } } }),
  },
  'GET /v1/pipelines/runs/:id': { role: 'member', homeResource: true, request: (f) => ({ url: `/v1/pipelines/runs/${f.run}` }) },
  'POST /v1/pipelines/runs/:id/cancel': { role: 'member', homeResource: true, request: (f) => ({ url: `/v1/pipelines/runs/${f.run}/cancel` }) },
  'GET /v1/usage': { role: 'member', request: () => ({ url: '/v1/usage' }) },
  'POST /v1/knowledge/search': { role: 'member', request: () => ({ url: '/v1/knowledge/search', payload: { query: 'walk', tables: ['chat_facts'] } }) },

  // org-admin: + its org's DLQ (the operator sees every org's), cache, keys, private knowledge.
  'GET /v1/dlq': { role: 'org-admin', operatorSeesEveryOrg: true, request: () => ({ url: '/v1/dlq' }) },
  // A filter that matches nothing: an operator's bulk retry would otherwise empty every org's DLQ mid-walk.
  'POST /v1/dlq/retry': { role: 'org-admin', operatorSeesEveryOrg: true, request: () => ({ url: '/v1/dlq/retry', payload: { agent: 'NoSuchAgent' } }) },
  'GET /v1/dlq/:id': { role: 'org-admin', operatorSeesEveryOrg: true, homeResource: true, request: (f) => ({ url: `/v1/dlq/${f.dlqKept}` }) },
  'POST /v1/dlq/:id/retry': {
    role: 'org-admin',
    operatorSeesEveryOrg: true,
    homeResource: true,
    // Edit-and-retry: the corrected input.
    request: async (f, consumes) => ({ url: `/v1/dlq/${consumes ? await f.dlq() : f.dlqKept}/retry`, payload: { input: { startup: { name: `Fixed ${marker()}` } } } }),
  },
  'DELETE /v1/dlq/:id': { role: 'org-admin', operatorSeesEveryOrg: true, homeResource: true, request: async (f, consumes) => ({ url: `/v1/dlq/${consumes ? await f.dlq() : f.dlqKept}` }) },
  'DELETE /v1/cache': { role: 'org-admin', request: () => ({ url: '/v1/cache' }) },
  'GET /v1/keys': { role: 'org-admin', request: () => ({ url: '/v1/keys' }) },
  'POST /v1/keys': { role: 'org-admin', request: () => ({ url: '/v1/keys', payload: { role: 'member' } }) },
  'DELETE /v1/keys/:id': { role: 'org-admin', homeResource: true, request: async (f, consumes) => ({ url: `/v1/keys/${consumes ? await f.key() : f.keyKept}` }) },
  'POST /v1/knowledge/:table': { role: 'org-admin', request: () => ({ url: '/v1/knowledge/chat_facts', payload: { documents: [{ external_id: marker(), content: 'walk fact' }] } }) },

  // operator: Bull Board, /metrics, shared knowledge, org plans.
  'GET /metrics': { role: 'operator', request: () => ({ url: '/metrics' }) },
  'POST /admin/knowledge/:table': {
    role: 'operator',
    request: () => ({ url: '/admin/knowledge/industry_packs', payload: { documents: [{ external_id: `walk-${marker()}`, industry: 'walk', display_name: 'Walk pack' }] } }),
  },
  'GET /admin/usage': { role: 'org-admin', operatorSeesEveryOrg: true, request: () => ({ url: '/admin/usage' }) },
  'GET /admin/usage/api': { role: 'org-admin', operatorSeesEveryOrg: true, request: () => ({ url: '/admin/usage/api' }) },
  'GET /admin/usage/assets/:file': { role: 'org-admin', operatorSeesEveryOrg: true, request: () => ({ url: '/admin/usage/assets/usage.js' }) },
  'GET /admin/orgs/:org/plan': { role: 'operator', request: () => ({ url: `/admin/orgs/${randomOrg()}/plan` }) },
  'PUT /admin/orgs/:org/plan': { role: 'operator', request: () => ({ url: `/admin/orgs/${randomOrg()}/plan`, payload: { weight: 2 } }) },
  'GET /admin/queues': { role: 'operator', request: () => ({ url: '/admin/queues' }) },
  'GET /admin/queues/': { role: 'operator', request: () => ({ url: '/admin/queues/' }) },
  'GET /admin/queues/*': { role: 'operator', request: (f) => ({ url: f.asset }) },
  'GET /admin/queues/api/queues': { role: 'operator', request: () => ({ url: '/admin/queues/api/queues' }) },
  'GET /admin/queues/api/queues/:queueName/:jobId': { role: 'operator', request: (f) => ({ url: `/admin/queues/api/queues/agent-jobs/${f.job}` }) },
};

/**
 * Bull Board's routes are the plugin's (dozens, changing with its version): every one is the operator's.
 * Reads use the agent queue and a home job; mutations name a queue that does not exist, so nothing changes.
 */
function boardCase(r: RegisteredRoute): Case | undefined {
  if (!r.path.startsWith('/admin/queues')) return undefined;
  const queue = r.method === 'GET' ? 'agent-jobs' : 'no-such-queue';
  return {
    role: 'operator',
    ok: boardOk,
    request: (f) => ({
      url: r.path.replace(':queueName', queue).replace(':jobId', f.job).replace(':queueStatus', 'failed').replace(':schedulerId', 'none'),
      ...(r.method === 'GET' ? {} : { payload: {} }),
    }),
  };
}

describe('every route, every role', () => {
  let s: Stack;
  let headers: Record<Caller, Record<string, string>>;
  let fixtures: Fixtures;
  let doc: { paths: Record<string, Record<string, { 'x-required-role'?: string; 'x-allowed-roles'?: string[]; description?: string }>> };
  const homeIds: string[] = [];

  beforeAll(async () => {
    s = await startStack({ ...UNTHROTTLED, ADMIN_TOKEN, JOB_ATTEMPTS: '1' }, { worker: true });
    const foreignOrg = randomOrg();
    headers = {
      none: {},
      member: s.auth,
      'org-admin': { authorization: `Bearer ${await s.newKey(s.orgId, 'org-admin')}` },
      'foreign org-admin': { authorization: `Bearer ${await s.newKey(foreignOrg, 'org-admin')}` },
      'operator key': { authorization: `Bearer ${await s.operatorKey()}` },
      ADMIN_TOKEN: { authorization: `Bearer ${ADMIN_TOKEN}` },
    };
    const home = headers['org-admin'];
    const post = async (url: string, payload: Record<string, unknown>) => {
      const res = await s.app.inject({ method: 'POST', url, headers: home, payload });
      expect(res.statusCode, `${url}: ${res.body}`).toBe(202);
      return res.json().id as string;
    };
    const homeMarker = marker();
    const jobId = await post('/v1/jobs', job(homeMarker));
    const delayed = () => post('/v1/jobs', { ...job(marker()), options: { delayMs: 3_600_000 } });
    // Dead letters: a scripted 400 is poison, so each job fails at once into the DLQ.
    const deadLetter = async () => {
      const m = marker();
      s.emulator.script({ status: 400, message: 'scripted bad request', match: { promptIncludes: m }, times: 1 });
      return post('/v1/jobs', job(m));
    };
    const dead = await Promise.all(Array.from({ length: 7 }, deadLetter));
    const flow = await post('/v1/flows/parallel', { tasks: [job(marker())] });
    const run = await post('/v1/pipelines/wizard_completion', { input: { companyName: `Home ${homeMarker}`, answers: [{ question: 'What do you build?', answer: 'robots' }] } });
    const keyId = async () => (await s.newKey(s.orgId)).slice(3, 19);
    const page = await s.app.inject({ method: 'GET', url: '/admin/queues', headers: headers.ADMIN_TOKEN });
    const asset = /<script defer src="([^"]+\.js)"/.exec(page.body)?.[1];
    expect(asset, 'a script on the board page').toBeDefined();
    await vi.waitFor(
      async () => {
        const view = await s.app.inject({ method: 'GET', url: `/v1/jobs/${jobId}`, headers: home });
        expect(view.json().state).toBe('completed');
        for (const id of dead) expect((await s.app.inject({ method: 'GET', url: `/v1/dlq/${id}`, headers: home })).statusCode, `DLQ entry ${id}`).toBe(200);
      },
      { timeout: 30_000, interval: 50 },
    );
    const [dlqKept, ...dlqPool] = dead;
    fixtures = {
      job: jobId,
      flow,
      run,
      dlqKept,
      dlq: async () => dlqPool.pop() ?? expect.fail('the DLQ fixture pool ran dry: add entries'),
      delayedKept: await delayed(),
      delayed,
      keyKept: await keyId(),
      key: keyId,
      asset: `/admin/queues/${asset}`,
      marker: homeMarker,
    };
    homeIds.push(jobId, flow, run, ...dead, fixtures.delayedKept, fixtures.keyKept);
    doc = (await s.app.inject({ method: 'GET', url: '/openapi.json' })).json();
  }, 90_000);
  afterAll(async () => s?.close());

  it('has a case, with its role, for every route the app registers, and the OpenAPI document declares that role', () => {
    const routes = registeredRoutes(s.app.printRoutes({ commonPrefix: false }));
    expect(routes.length).toBeGreaterThan(60);
    const missing = routes.filter((r) => !CASES[`${r.method} ${r.path}`] && !boardCase(r)).map((r) => `${r.method} ${r.path}`);
    expect(missing, 'routes without a case here: decide their role in the route table, then add them').toEqual([]);
    const stale = Object.keys(CASES).filter((k) => !routes.some((r) => `${r.method} ${r.path}` === k));
    expect(stale, 'cases for routes that no longer exist').toEqual([]);

    const wrong: string[] = [];
    // Fastify answers a prefixed plugin's `/` with and without the slash (Bull Board's page): one document path.
    const paths = new Map(Object.entries(doc.paths).map(([path, ops]) => [openApiPath(path), ops]));
    for (const r of routes) {
      if (r.path.startsWith('/docs') || r.path.endsWith('*')) continue; // the docs page and static assets are not documented
      const c = CASES[`${r.method} ${r.path}`] ?? boardCase(r)!;
      const op = paths.get(openApiPath(r.path))?.[r.method.toLowerCase()];
      const declared = { role: op?.['x-required-role'], allowed: op?.['x-allowed-roles'] };
      const want = { role: c.role, allowed: c.role === 'public' ? undefined : admitted(c) };
      if (JSON.stringify(declared) !== JSON.stringify(want)) wrong.push(`${r.method} ${r.path}: declares ${JSON.stringify(declared)}, the issue says ${JSON.stringify(want)}`);
      if (c.role !== 'public' && !op?.description?.includes(`**${c.role}**`)) wrong.push(`${r.method} ${r.path}: the description does not name the role`);
    }
    expect(wrong).toEqual([]);
  });

  it('answers each caller 2xx, 401, 403 or 404 exactly as the route’s role says', async () => {
    const routes = registeredRoutes(s.app.printRoutes({ commonPrefix: false }));
    // Bull Board's mutations last: pausing every queue mid-walk would hold the jobs the other routes start.
    const mutatesBoard = (r: RegisteredRoute) => r.path.startsWith('/admin/queues') && r.method !== 'GET';
    const order = [...routes.filter((r) => !mutatesBoard(r)), ...routes.filter(mutatesBoard).sort((a, b) => Number(a.path.endsWith('/resume')) - Number(b.path.endsWith('/resume')))];
    const wrong: string[] = [];
    const seen = new Set<string>();
    for (const r of order) {
      const c = CASES[`${r.method} ${r.path}`] ?? boardCase(r)!;
      for (const caller of CALLERS) {
        const admits = c.role === 'public' || (caller !== 'none' && admitted(c).includes(roleOf[caller]));
        const expected: 'ok' | 401 | 403 | 404 =
          c.role === 'public' ? 'ok' : caller === 'none' ? 401 : !admits ? 403 : caller === 'foreign org-admin' && c.homeResource ? 404 : 'ok';
        const req = await c.request(fixtures, expected === 'ok');
        const res = await s.app.inject({ method: r.method as 'GET', url: req.url, headers: headers[caller], ...(req.payload !== undefined ? { payload: req.payload } : {}) });
        seen.add(`${expected}`);
        const ok = expected === 'ok' ? (c.ok ?? ((st: number) => st >= 200 && st < 300))(res.statusCode) : res.statusCode === expected;
        if (!ok) wrong.push(`${caller} ${r.method} ${req.url}: ${res.statusCode}, expected ${expected}: ${res.body.slice(0, 160)}`);
        // A refused caller learns nothing, and another org's caller sees none of the home org's data.
        const foreignEyes = caller === 'foreign org-admin' || expected !== 'ok';
        if (foreignEyes && c.role !== 'public') {
          const leaked = [fixtures.marker, ...homeIds].filter((x) => res.body.includes(x) && !req.url.includes(x));
          if (leaked.length) wrong.push(`${caller} ${r.method} ${req.url} shows the home org's ${leaked.join(', ')}`);
        }
      }
    }
    // Every kind of answer happened (the walk is not vacuous).
    expect([...seen].sort()).toEqual(['401', '403', '404', 'ok']);
    expect(wrong).toEqual([]);

    // The foreign org's tries changed nothing of the home org's.
    const home = headers['org-admin'];
    expect((await s.app.inject({ method: 'GET', url: `/v1/dlq/${fixtures.dlqKept}`, headers: home })).statusCode).toBe(200);
    const kept = await s.app.inject({ method: 'GET', url: `/v1/jobs/${fixtures.delayedKept}`, headers: home });
    expect(kept.statusCode).toBe(200);
    expect(kept.json().state).not.toBe('cancelled');
    const keys = (await s.app.inject({ method: 'GET', url: '/v1/keys', headers: home })).json().keys as Array<{ id: string; revokedAt: string | null }>;
    expect(keys.find((k) => k.id === fixtures.keyKept)).toMatchObject({ revokedAt: null });
  }, 240_000);

  it('lets an org-admin create a key of its org shown once, list it without its secret, revoke it, and never make an operator', async () => {
    const admin = headers['org-admin'];
    const foreign = headers['foreign org-admin'];
    const made = await s.app.inject({ method: 'POST', url: '/v1/keys', headers: admin, payload: { role: 'org-admin' } });
    expect(made.statusCode).toBe(201);
    const { id, key, role, orgId } = made.json();
    expect({ role, orgId }).toEqual({ role: 'org-admin', orgId: s.orgId });
    expect(key).toMatch(new RegExp(`^aq_${id}_[A-Za-z0-9_-]{32}$`));
    // The new key works, with its role: it can list the org's keys.
    const listed = await s.app.inject({ method: 'GET', url: '/v1/keys', headers: { authorization: `Bearer ${key}` } });
    expect(listed.statusCode).toBe(200);
    expect(listed.json().keys.map((k: { id: string }) => k.id)).toContain(id);
    expect(listed.body).not.toContain(key.slice(-32));
    // Without a body: a member key.
    const member = await s.app.inject({ method: 'POST', url: '/v1/keys', headers: admin });
    expect(member.statusCode).toBe(201);
    expect(member.json().role).toBe('member');
    expect((await s.app.inject({ method: 'GET', url: '/v1/keys', headers: { authorization: `Bearer ${member.json().key}` } })).statusCode).toBe(403);

    const operator = await s.app.inject({ method: 'POST', url: '/v1/keys', headers: admin, payload: { role: 'operator' } });
    expect(operator.statusCode).toBe(400);
    expect(operator.json().details[0].path).toBe('role');

    expect((await s.app.inject({ method: 'DELETE', url: `/v1/keys/${id}`, headers: foreign })).statusCode).toBe(404);
    const revoked = await s.app.inject({ method: 'DELETE', url: `/v1/keys/${id}`, headers: admin });
    expect(revoked.statusCode).toBe(200);
    expect(revoked.json()).toMatchObject({ id, role: 'org-admin', revokedAt: expect.any(String) });
    expect((await s.app.inject({ method: 'GET', url: '/v1/keys', headers: { authorization: `Bearer ${key}` } })).statusCode).toBe(401);
    expect((await s.app.inject({ method: 'DELETE', url: `/v1/keys/${id}`, headers: admin })).statusCode).toBe(404);
  });
});

describe('a route without a role', () => {
  it('stops the app from starting, naming the route', async () => {
    const { buildBareApp } = await import('./helpers/bare-app.js');
    const build = (plugin: (app: import('fastify').FastifyInstance) => void) => buildBareApp({ plugins: [plugin] });
    const rogue = await build((app) => app.get('/v1/rogue', async () => 'no role'));
    await expect(rogue.ready()).rejects.toThrow(/routes without a role.*GET \/v1\/rogue/);
    await rogue.close().catch(() => undefined);
    // The positive control: the same route with a role starts, and the hook enforces it.
    const declared = await build((app) => app.get('/v1/declared', { config: { access: { role: 'org-admin' } } }, async () => 'ok'));
    await declared.ready();
    expect((await declared.inject({ method: 'GET', url: '/v1/declared' })).statusCode).toBe(401);
    await declared.close();
  });
});
