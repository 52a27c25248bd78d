import { existsSync } from 'node:fs';
import { Validator } from '@seriousme/openapi-schema-validator';
import { chromium } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { openApiPath, registeredRoutes } from './helpers/route-list.js';
import { startStack, type Stack } from './helpers/stack.js';

type Operation = {
  security?: unknown[];
  parameters?: Array<{ name: string; in: string }>;
  requestBody?: { content: Record<string, { schema: JsonSchema }> };
  responses: Record<string, unknown>;
};
type JsonSchema = { type?: string; properties?: Record<string, JsonSchema>; items?: JsonSchema; anyOf?: JsonSchema[]; required?: string[] };
type Document = { openapi: string; paths: Record<string, Record<string, Operation>>; components: { securitySchemes: Record<string, { type: string; scheme: string }> } };

const CHROMIUM = '/usr/bin/chromium';

/** The object branch of a body schema (optional bodies are `anyOf: [object, null]`). */
const objectOf = (s: JsonSchema): JsonSchema => s.anyOf?.find((x) => x.type === 'object') ?? s;

describe('OpenAPI document', () => {
  let s: Stack;
  let doc: Document;

  beforeAll(async () => {
    s = await startStack({ ADMIN_TOKEN: 'adm-openapi-test-token' });
    const res = await s.app.inject({ method: 'GET', url: '/openapi.json' });
    expect(res.statusCode).toBe(200);
    doc = res.json();
  });
  afterAll(async () => s?.close());

  it('is a valid OpenAPI 3.1 document with a bearer security scheme, served without a key', async () => {
    expect(doc.openapi).toMatch(/^3\.1\./);
    const result = await new Validator().validate(structuredClone(doc) as never);
    expect(result.errors ?? []).toEqual([]);
    expect(result.valid).toBe(true);
    expect(doc.components.securitySchemes.bearer).toMatchObject({ type: 'http', scheme: 'bearer' });
    // Every /v1 operation requires the bearer key; health and the document itself do not.
    for (const [path, ops] of Object.entries(doc.paths)) {
      for (const [method, op] of Object.entries(ops)) {
        if (path.startsWith('/v1/')) expect(op.security, `${method} ${path}`).toEqual([{ bearer: [] }]);
      }
    }
    expect(doc.paths['/healthz'].get.security ?? []).toEqual([]);
    expect(doc.paths['/metrics'].get.security).toEqual([{ bearer: [] }, { basic: [] }]);
  });

  it('lists every route the app registered', async () => {
    const routes = registeredRoutes(s.app.printRoutes({ commonPrefix: false }));
    // The positive control: the parser sees the feature plugins' routes too.
    expect(routes).toEqual(expect.arrayContaining([{ method: 'GET', path: '/v1/dlq' }, { method: 'POST', path: '/v1/flows/parallel' }, { method: 'GET', path: '/metrics' }]));
    // Left out on purpose: the docs page itself (/docs and its assets) and static-file wildcards.
    const documented = routes.filter((r) => !r.path.startsWith('/docs') && !r.path.endsWith('*'));
    expect(documented.length).toBeGreaterThan(30);
    // Fastify answers a prefixed plugin's `/` both with and without the slash (Bull Board's page): one entry.
    const paths = new Map(Object.entries(doc.paths).map(([path, ops]) => [openApiPath(path), ops]));
    const missing = documented.filter((r) => !paths.get(openApiPath(r.path))?.[r.method.toLowerCase()]).map((r) => `${r.method} ${r.path}`);
    expect(missing).toEqual([]);
    // And nothing is documented that does not exist.
    const registered = new Set(documented.map((r) => `${r.method.toLowerCase()} ${openApiPath(r.path)}`));
    const phantom = [...paths].flatMap(([path, ops]) => Object.keys(ops).map((m) => `${m} ${path}`)).filter((k) => !registered.has(k));
    expect(phantom).toEqual([]);
  });

  it('declares every path parameter of every operation', () => {
    const undeclared: string[] = [];
    for (const [path, ops] of Object.entries(doc.paths)) {
      for (const name of [...path.matchAll(/\{(\w+)\}/g)].map((m) => m[1])) {
        for (const [method, op] of Object.entries(ops)) {
          if (!op.parameters?.some((p) => p.in === 'path' && p.name === name)) undeclared.push(`${method} ${path}: ${name}`);
        }
      }
    }
    expect(undeclared).toEqual([]);
  });

  it('has every request body the README describes, with its fields', () => {
    const body = (method: string, path: string) => {
      const op = doc.paths[path]?.[method];
      expect(op, `${method} ${path}`).toBeDefined();
      const schema = op.requestBody?.content['application/json']?.schema;
      expect(schema, `${method} ${path} body`).toBeDefined();
      return objectOf(schema!);
    };
    const job = body('post', '/v1/jobs');
    expect(job.required).toEqual(expect.arrayContaining(['agent', 'action', 'input']));
    expect(Object.keys(job.properties!.options.properties!)).toEqual(expect.arrayContaining(['priority', 'delayMs', 'idempotencyKey', 'model', 'stream']));
    expect(body('post', '/v1/jobs/bulk').properties!.jobs.items!.properties).toHaveProperty('agent');
    expect(body('post', '/v1/stream').properties).toHaveProperty('agent');
    expect(body('post', '/v1/flows/parallel').properties!.tasks.items!.properties).toHaveProperty('action');
    expect(body('post', '/v1/flows/dashboard').required).toEqual(['startupId']);
    expect(body('post', '/v1/pipelines/wizard_completion').properties!.input.properties).toHaveProperty('answers');
    expect(body('post', '/v1/knowledge/{table}').properties).toHaveProperty('documents');
    expect(body('post', '/v1/knowledge/search').required).toEqual(['query']);
    expect(body('post', '/v1/dlq/retry').properties).toHaveProperty('class');
    // Edit-and-retry: the corrected input.
    expect(body('post', '/v1/dlq/{id}/retry').properties).toHaveProperty('input');
    // Query parameters, documented from the same schemas that validate them.
    const names = (method: string, path: string) => doc.paths[path][method].parameters!.map((p) => `${p.in}.${p.name}`);
    expect(names('get', '/v1/jobs/{id}')).toEqual(expect.arrayContaining(['path.id', 'query.waitMs']));
    expect(names('get', '/v1/jobs')).toEqual(expect.arrayContaining(['query.state', 'query.agent', 'query.since', 'query.limit']));
    expect(names('get', '/v1/usage')).toEqual(expect.arrayContaining(['query.from', 'query.to', 'query.groupBy']));
    expect(names('get', '/v1/jobs/{id}/stream')).toEqual(expect.arrayContaining(['header.last-event-id']));
  });

  it('serves the docs page with its own assets', async () => {
    const page = await s.app.inject({ method: 'GET', url: '/docs' });
    expect(page.statusCode).toBe(200);
    expect(page.headers['content-type']).toMatch(/text\/html/);
    // Every script and stylesheet is served by this app: nothing is fetched from elsewhere.
    const refs = [...page.body.matchAll(/(?:src|href)="([^"]+)"/g)].map((m) => m[1]);
    expect(refs.length).toBeGreaterThan(0);
    expect(refs.filter((r) => !r.startsWith('/docs/'))).toEqual([]);
    for (const ref of refs) expect((await s.app.inject({ method: 'GET', url: ref })).statusCode, ref).toBe(200);
  });

  it('renders the operations in a browser with no network but this server', async () => {
    if (!existsSync(CHROMIUM)) throw new Error(`Chromium is missing at ${CHROMIUM}; install it with \`apt-get update && apt-get install -y chromium\``);
    const base = await s.app.listen({ port: 0, host: '127.0.0.1' });
    const browser = await chromium.launch({ executablePath: CHROMIUM, args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking'], headless: true });
    try {
      const context = await browser.newContext();
      const outside: string[] = [];
      await context.route('**/*', (route) => {
        if (route.request().url().startsWith(base)) return route.continue();
        outside.push(route.request().url());
        return route.abort();
      });
      const page = await context.newPage();
      await page.goto(`${base}/docs`);
      await page.getByText('/v1/jobs/bulk').first().waitFor({ timeout: 20_000 });
      await page.getByText('/v1/dlq/{id}/retry').first().waitFor({ timeout: 5_000 });
      expect(outside).toEqual([]);
    } finally {
      await browser.close();
    }
  }, 60_000);
});
