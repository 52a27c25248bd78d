import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { getEventListeners } from 'node:events';
import type { AddressInfo } from 'node:net';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { AgentqHttpError, AgentqTimeoutError, createAgentqClient, type JobView } from '../src/producers/client/client.js';
import { defaultRegistry } from '../src/shared/agents/registry.js';
import { ValidationError } from '../src/shared/core/errors.js';
import { sleep } from '../src/shared/core/abortable-sleep.js';

/**
 * A stand-in for the agentq API that follows its documented contract (status codes, bodies, Retry-After,
 * `?waitMs` long poll), using the real registry for input validation. Jobs finish when a test says so.
 */
const API_KEY = 'aq_test_secret';
const LONG_POLL_MAX_MS = 200;
const registry = defaultRegistry();

interface FakeJob {
  view: JobView;
  waiters: Array<() => void>;
}

const jobs = new Map<string, FakeJob>();
let requests: Array<{ method: string; url: string; auth?: string; body?: any }> = [];
/** Called on every request the stand-in receives (after it is recorded in `requests`). */
let onRequest: () => void = () => undefined;
let nextId = 1;
let unavailableOnce = 0;
let server: Server;
let baseUrl: string;

function send(res: ServerResponse, status: number, body: unknown, headers: Record<string, string> = {}) {
  res.writeHead(status, { 'content-type': 'application/json', ...headers });
  res.end(JSON.stringify(body));
}

function createJob(req: any): { id: string; state: string } {
  registry.validateInput(req.agent, req.action, req.input);
  const id = `job-${nextId++}`;
  const view: JobView = { id, agent: req.agent, action: req.action, state: 'waiting', progress: 0, attempts: 0, createdAt: new Date().toISOString() };
  jobs.set(id, { view, waiters: [] });
  return { id, state: 'waiting' };
}

function finish(id: string, data: unknown) {
  const job = jobs.get(id)!;
  job.view = {
    ...job.view,
    state: 'completed',
    progress: 100,
    attempts: 1,
    finishedAt: new Date().toISOString(),
    result: { success: true, data, tokensUsed: { input: 900, output: 300 }, costUsd: 0.0012, durationMs: 1800, model: 'gemini-2.5-pro' },
  };
  for (const wake of job.waiters.splice(0)) wake();
}

async function handle(req: IncomingMessage, res: ServerResponse) {
  const chunks: Buffer[] = [];
  for await (const c of req) chunks.push(c as Buffer);
  const body = chunks.length ? JSON.parse(Buffer.concat(chunks).toString()) : undefined;
  const url = new URL(req.url!, 'http://x');
  requests.push({ method: req.method!, url: req.url!, auth: req.headers.authorization, body });
  onRequest();

  if (req.headers.authorization !== `Bearer ${API_KEY}`) return send(res, 401, { error: 'unauthenticated' });
  if (url.pathname === '/v1/agents') return send(res, 200, { agents: registry.list() });
  if (url.pathname === '/v1/hang') return; // never answers
  if (url.pathname === '/v1/proxy-error') {
    res.writeHead(502, { 'content-type': 'text/html' });
    return res.end('Bad gateway');
  }

  try {
    if (req.method === 'POST' && url.pathname === '/v1/jobs') {
      if (body.input?.startupId === 'rate-limited') return send(res, 429, { error: 'rate limit exceeded', retryAfter: 7 }, { 'retry-after': '7' });
      return send(res, 202, createJob(body));
    }
    if (req.method === 'POST' && url.pathname === '/v1/jobs/bulk') {
      return send(res, 202, { jobs: body.jobs.map(createJob) });
    }
  } catch (err) {
    if (err instanceof ValidationError) return send(res, 400, { error: err.message, details: err.details });
    throw err;
  }

  const id = url.pathname.match(/^\/v1\/jobs\/([^/]+)$/)?.[1];
  const job = id ? jobs.get(decodeURIComponent(id)) : undefined;
  if (!job) return send(res, 404, { error: 'job not found' });
  if (req.method === 'DELETE') {
    job.view = { ...job.view, state: 'cancelled', finishedAt: new Date().toISOString() };
    return send(res, 200, job.view);
  }
  if (unavailableOnce > 0) {
    unavailableOnce--;
    return send(res, 503, { error: 'queue unavailable, retry shortly' }, { 'retry-after': '0' });
  }
  const waitMs = Math.min(Number(url.searchParams.get('waitMs') ?? 0), LONG_POLL_MAX_MS);
  if (waitMs > 0 && !['completed', 'failed', 'cancelled'].includes(job.view.state)) {
    await new Promise<void>((resolve) => {
      const timer = setTimeout(resolve, waitMs);
      job.waiters.push(() => {
        clearTimeout(timer);
        resolve();
      });
    });
  }
  return send(res, 200, job.view);
}

beforeAll(async () => {
  server = createServer((req, res) => {
    handle(req, res).catch((err) => send(res, 500, { error: String(err) }));
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  baseUrl = `http://127.0.0.1:${(server.address() as AddressInfo).port}/`;
});

afterAll(async () => {
  server.closeAllConnections();
  await new Promise((resolve) => server.close(resolve));
});

beforeEach(() => {
  requests = [];
  unavailableOnce = 0;
  onRequest = () => undefined;
});

const client = () => createAgentqClient({ baseUrl, apiKey: API_KEY, timeoutMs: 2000, minPollIntervalMs: 10 });

async function caught(p: Promise<unknown>): Promise<any> {
  try {
    await p;
  } catch (err) {
    return err;
  }
  throw new Error('expected a rejection');
}

describe('agentq client over HTTP', () => {
  it('enqueues with the documented request shape and bearer key', async () => {
    const job = await client().enqueue(
      'RiskAnalyzer',
      'analyze_risks',
      { startup: { name: 'Acme', stage: 'seed' } },
      { priority: 2, idempotencyKey: 'wizard-42', delayMs: 0, model: 'gemini-2.5-flash' },
    );
    expect(job).toMatchObject({ id: 'job-1', state: 'waiting' });
    expect(requests).toEqual([
      {
        method: 'POST',
        url: '/v1/jobs',
        auth: `Bearer ${API_KEY}`,
        body: {
          agent: 'RiskAnalyzer',
          action: 'analyze_risks',
          input: { startup: { name: 'Acme', stage: 'seed' } },
          options: { priority: 2, idempotencyKey: 'wizard-42', delayMs: 0, model: 'gemini-2.5-flash' },
        },
      },
    ]);
  });

  it('maps a 400 to AgentqHttpError with the server\'s path-prefixed details', async () => {
    const err = await caught(client().enqueue('RiskAnalyzer', 'analyze_risks', { startup: { name: '' } }));
    expect(err).toBeInstanceOf(AgentqHttpError);
    expect(err.status).toBe(400);
    expect(err.body.details).toContainEqual(expect.objectContaining({ path: 'input.startup.name' }));
    expect(err.retryAfterS).toBeUndefined();
  });

  it('maps 401, 404 and 429 (with Retry-After) and keeps a non-JSON error readable', async () => {
    const anon = createAgentqClient({ baseUrl, apiKey: 'wrong' });
    const e401 = await caught(anon.get('job-1'));
    expect(e401).toMatchObject({ status: 401, body: { error: 'unauthenticated' } });

    const e404 = await caught(client().get('no-such-job'));
    expect(e404).toMatchObject({ status: 404, body: { error: 'job not found' } });

    const e429 = await caught(client().enqueue('DealScorer', 'pipeline_summary', { startupId: 'rate-limited' }));
    expect(e429).toBeInstanceOf(AgentqHttpError);
    expect(e429).toMatchObject({ status: 429, retryAfterS: 7, body: { error: 'rate limit exceeded', retryAfter: 7 } });

    const e502 = await caught(client().http.json('GET', '/v1/proxy-error'));
    expect(e502).toMatchObject({ status: 502, body: { error: 'Bad gateway' } });
  });

  it('waitFor long-polls until the job finishes and returns its result', async () => {
    const c = client();
    const job = await c.enqueue('DealScorer', 'pipeline_summary', { startupId: 'st_1' });
    const summary = { startupId: 'st_1', stages: [], healthScore: 40, atRiskDeals: [], summary: 'Thin pipeline.' };
    // The job finishes while the client's second long poll is held open.
    const polls = () => requests.filter((r) => r.method === 'GET').length;
    onRequest = () => {
      // After the handler has parked the poll (synchronously, before its first await).
      if (polls() === 2) queueMicrotask(() => finish(job.id, summary));
    };
    const view = await job.wait({ timeoutMs: 20_000, pollMs: 100 });
    expect(view.state).toBe('completed');
    expect(view.result?.data).toEqual(summary);
    const gets = requests.filter((r) => r.method === 'GET');
    expect(gets).toHaveLength(2);
    for (const p of gets) expect(p.url).toMatch(new RegExp(`^/v1/jobs/${job.id}\\?waitMs=\\d+$`));
  });

  it('waitFor rides out a 503 and gives up at its timeout with the last view', async () => {
    const c = client();
    const { id } = await c.enqueue('DealScorer', 'pipeline_summary', { startupId: 'st_2' });
    unavailableOnce = 1;
    // A timeout that leaves room for the 503 and a long poll after it, however busy the machine.
    const err = await caught(c.waitFor(id, { timeoutMs: 2000, pollMs: 100 }));
    expect(err).toBeInstanceOf(AgentqTimeoutError);
    expect(err.job).toMatchObject({ id, state: 'waiting' });
    expect(unavailableOnce).toBe(0);
    expect(requests.filter((r) => r.method === 'GET').length).toBeGreaterThanOrEqual(2);
  });

  it('waitFor on a client without a request timeout (timeoutMs 0) sets none on its long polls either', async () => {
    const c = createAgentqClient({ baseUrl, apiKey: API_KEY, timeoutMs: 0, minPollIntervalMs: 10 });
    const { id } = await c.enqueue('DealScorer', 'pipeline_summary', { startupId: 'st_no_timeout' });
    // Each long poll ends when the server answers "waiting" at its waitMs: the client polls again until its own
    // deadline instead of aborting the poll at that very instant.
    const err = await caught(c.waitFor(id, { timeoutMs: 1500, pollMs: 300 }));
    expect(err).toBeInstanceOf(AgentqTimeoutError);
    expect(err.message).toMatch(/did not finish in time \(state waiting\)/);
    expect(requests.filter((r) => r.method === 'GET').length).toBeGreaterThanOrEqual(2);
  });

  it("the abortable sleep (the client's poll pauses and stream reconnections, the route guard's backoffs) leaves no abort listener on a long-lived signal", async () => {
    const ac = new AbortController();
    for (let i = 0; i < 20; i++) await sleep(1, ac.signal);
    expect(getEventListeners(ac.signal, 'abort')).toHaveLength(0);
    const aborted = sleep(60_000, ac.signal);
    ac.abort(new Error('stop'));
    await expect(aborted).rejects.toThrow('stop');
  });

  it('bulk-enqueues, cancels and lists agents', async () => {
    const c = client();
    const { jobs: [a, b] } = await c.enqueueBulk([
      { agent: 'TaskGenerator', action: 'suggest_next_actions', input: { startupId: 's1' } },
      { agent: 'KnowledgeAssistant', action: 'answer', input: { question: 'How do I price?' }, options: { priority: 5 } },
    ]);
    expect(requests[0]).toMatchObject({ method: 'POST', url: '/v1/jobs/bulk' });
    expect(requests[0].body.jobs[1]).toEqual({ agent: 'KnowledgeAssistant', action: 'answer', input: { question: 'How do I price?' }, options: { priority: 5 } });
    expect(b.id).not.toBe(a.id);

    const cancelled = await a.cancel();
    expect(cancelled.state).toBe('cancelled');
    expect(requests.at(-1)).toMatchObject({ method: 'DELETE', url: `/v1/jobs/${a.id}` });
    expect((await c.waitFor(a.id, { timeoutMs: 1000 })).state).toBe('cancelled');

    const agents = await c.agents();
    expect(agents.map((x) => x.name)).toContain('KnowledgeAssistant');
    expect(agents[0].actions[0].inputSchema).toHaveProperty('type', 'object');
  });

  it('times out a request that gets no answer', async () => {
    const c = createAgentqClient({ baseUrl, apiKey: API_KEY, timeoutMs: 100 });
    const err = await caught(c.http.json('GET', '/v1/hang'));
    expect(err).toBeInstanceOf(AgentqTimeoutError);
  });
});
