import { Queue } from 'bullmq';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startStack, type Stack } from './helpers/stack.js';

/** Path parameters no route expects: a NUL, a broken percent-escape, a traversal, one far too long. */
const ODD_IDS = ['%00', '%E0%A4%A', '..%2F..%2Fetc', 'a'.repeat(3000)];
/** Query strings of the wrong type or shape: a word for a number, a repeated key, a bracketed key, a huge number. */
const ODD_QUERIES = ['', '?limit=abc&waitMs=-5', '?limit=1&limit=2', '?x[y]=1&state=nope', `?since=${'9'.repeat(400)}&cursor=%00`];
/** Bodies of the wrong JSON type, broken JSON, a prototype key, nulls where objects go, a huge field. */
const ODD_BODIES = [
  'null',
  '[]',
  '"text"',
  '{"agent":',
  '{"__proto__":{"polluted":true},"constructor":{"prototype":{"polluted":true}}}',
  '{"jobs":[null],"input":null,"options":{"priority":1e308,"delayMs":-1,"deadline":"soon","model":{}}}',
  JSON.stringify({ agent: 'RiskAnalyzer', action: 'analyze_risks', input: { startup: { name: 'x'.repeat(200_000) } } }),
  // Well-shaped for the routes that write or search text in Postgres, which refuses a NUL in text and jsonb.
  JSON.stringify({ documents: [{ external_id: 'a\u0000', content: 'x\u0000', title: 't\u0000', industry: 'i\u0000', display_name: 'd\u0000' }] }),
  // A search's query text is only embedded (any text will do); its filters go to SQL.
  JSON.stringify({ query: 'a\u0000b', filters: { startup_id: '\u0000' } }),
];

interface Probe {
  method: string;
  url: string;
  body?: string;
  /** The OpenAPI operation probed (\`POST /v1/jobs/{id}\`). */
  op: string;
  /** Whether the operation declares a body or query parameters, which its validation refuses with field paths. */
  validates: boolean;
  /** Whether a 2xx is wrong: a body of the wrong shape is; a GET's stray query string, or \`null\` for an optional body, is not. */
  mustRefuse: boolean;
}

type JsonSchema = { type?: string | string[]; anyOf?: JsonSchema[]; oneOf?: JsonSchema[] };
type Operation = { parameters?: Array<{ in?: string; schema?: { enum?: unknown[] } }>; requestBody?: { required?: boolean; content?: Record<string, { schema?: JsonSchema }> } };

/** A body left out, or JSON `null` (what fastify hands the validator for no body), is one the route takes. */
function takesNoBody(op: Operation): boolean {
  if (op.requestBody?.required !== true) return true;
  const isNull = (s: JsonSchema | undefined): boolean =>
    !!s && (s.type === 'null' || (Array.isArray(s.type) && s.type.includes('null')) || [...(s.anyOf ?? []), ...(s.oneOf ?? [])].some(isNull));
  return isNull(op.requestBody.content?.['application/json']?.schema);
}

/** Every operation of the OpenAPI document, with every odd path parameter, query string and body. */
function probesOf(doc: { paths: Record<string, Record<string, Operation>> }): Probe[] {
  const probes: Probe[] = [];
  for (const [path, ops] of Object.entries(doc.paths)) {
    for (const method of Object.keys(ops).filter((m) => ['get', 'post', 'put', 'patch', 'delete'].includes(m))) {
      const withBody = method !== 'get' && method !== 'delete';
      const op = `${method.toUpperCase()} ${path}`;
      // A free-form path id has nothing to refuse by shape (an odd one is a 404): a body or a query string has.
      const validates = path.startsWith('/v1/') && (Boolean(ops[method].requestBody) || (ops[method].parameters ?? []).some((q) => q.in === 'query'));
      // A path parameter with fixed values (a table name) also gets its first one, so the body reaches the route.
      const fixed = (ops[method].parameters ?? []).flatMap((q) => (q.in === 'path' && q.schema?.enum?.length ? [String(q.schema.enum[0])] : []));
      for (const id of path.includes('{') ? [...ODD_IDS, ...fixed] : ['']) {
        const base = path.replace(/\{[^}]+\}/g, id);
        for (const query of ODD_QUERIES) {
          // A route's long-poll and stream forms are left to their own tests: they wait by design.
          if (base.endsWith('/stream') && method === 'get') continue;
          if (!withBody) {
            // Only the JSON API's resources: Bull Board's pages under /admin/queues are its single-page app's HTML.
            probes.push({ method: method.toUpperCase(), url: base + query, op, validates, mustRefuse: ODD_IDS.includes(id) && base.startsWith('/v1/') });
            continue;
          }
          // Bull Board's actions (/admin/queues/api/...) take no body and ignore one: only the JSON API's bodies are checked.
          const api = base.startsWith('/v1/');
          const noBody = takesNoBody(ops[method]);
          for (const body of ODD_BODIES) probes.push({ method: method.toUpperCase(), url: base + query, body, op, validates, mustRefuse: api && !(noBody && body === 'null') });
        }
      }
    }
  }
  return probes;
}

/** A non-empty message; Bull Board's own API (mounted under /admin/queues) answers with its `{ key }` for its UI. */
function namesError(url: string, error: unknown): boolean {
  if (typeof error === 'string') return error.length > 0;
  return url.startsWith('/admin/queues/') && typeof (error as { key?: unknown } | undefined)?.key === 'string';
}

/**
 * The promise of the API's one error handler, checked on every route at once: whatever a caller sends, the
 * answer is a 4xx with a JSON error naming what was wrong (never a 5xx, an HTML page or an empty body), and a
 * refused request writes nothing. New routes are covered through the OpenAPI document they must appear in.
 */
describe('malformed requests on every route', () => {
  let s: Stack;
  let queue: Queue;
  beforeAll(async () => {
    // The three callers' keys are verified once, not in Postgres on every probe (the suite's TTL of 0): the probes
    // are about what a route does with what it is sent, their keys never change, and the thousands of key lookups were
    // half of this file's time, all through the suite's one PGlite the other worker's files wait on too.
    s = await startStack({ AUTH_CACHE_TTL_MS: '600000' });
    queue = new Queue('agent-jobs', { connection: { url: s.cfg.REDIS_URL }, prefix: s.cfg.QUEUE_PREFIX });
  });
  afterAll(async () => {
    await queue?.close();
    await s?.close();
  });

  it('answers each with a 4xx JSON error, names the field of a schema failure, and enqueues nothing', async () => {
    const doc = (await s.app.inject({ method: 'GET', url: '/openapi.json' })).json();
    const probes = probesOf(doc);
    // Every kind of caller, so each route's own validation is reached: an org's member and org-admin, the operator.
    const callers = [s.auth, { authorization: `Bearer ${await s.newKey(s.orgId, 'org-admin')}` }, { authorization: `Bearer ${await s.operatorKey()}` }];
    const before = await queue.count();
    const wrong: string[] = [];
    const validated = new Set<string>();
    // Eight requests in flight at once: most of a probe's time is its route's wait on Redis or Postgres, and the
    // verdicts do not depend on order.
    const checks = probes.flatMap((p) => callers.map((headers) => ({ p, headers })));
    const probe = async ({ p, headers }: (typeof checks)[number]) => {
      const res = await s.app.inject({
        method: p.method as 'GET',
        url: p.url,
        headers: { ...headers, ...(p.body !== undefined ? { 'content-type': 'application/json' } : {}) },
        ...(p.body !== undefined ? { payload: p.body } : {}),
      });
      const what = `${p.method} ${p.url.slice(0, 60)} ${p.body?.slice(0, 60) ?? ''} -> ${res.statusCode} ${res.body.slice(0, 160)}`;
      let body: { error?: unknown; details?: Array<{ path?: unknown; message?: unknown }> } | undefined;
      try {
        body = res.json();
      } catch {
        body = undefined;
      }
      if (res.statusCode >= 500) wrong.push(`5xx: ${what}`);
      else if (res.statusCode >= 400 && !namesError(p.url, body?.error)) wrong.push(`no JSON error: ${what}`);
      else if (res.statusCode < 400 && p.mustRefuse) wrong.push(`accepted: ${what}`);
      if (res.statusCode === 400 && body?.details !== undefined) {
        validated.add(p.op);
        const named = Array.isArray(body.details) && body.details.length > 0 && body.details.every((d) => typeof d.path === 'string' && typeof d.message === 'string');
        if (!named) wrong.push(`details without a field: ${what}`);
      }
    };
    const lanes = Array.from({ length: 8 }, async () => {
      for (let next = checks.shift(); next; next = checks.shift()) await probe(next);
    });
    await Promise.all(lanes);
    expect(wrong).toEqual([]);
    // The probes reached each checked route's own validation, not only its auth or routing refusals.
    const unreached = [...new Set(probes.filter((p) => p.validates && !validated.has(p.op)).map((p) => p.op))];
    expect(unreached).toEqual([]);
    expect(await queue.count()).toBe(before);
    expect(({} as { polluted?: unknown }).polluted).toBeUndefined();
  }, 120_000);
});
