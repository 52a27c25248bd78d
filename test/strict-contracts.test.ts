import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createDirectProducer } from '../src/producers/direct-producer.js';
import { z } from 'zod';
import { ValidationError } from '../src/shared/core/errors.js';
import { defineAction, defineAgent } from '../src/shared/agents/define-agent.js';
import { builtInAgents } from '../src/shared/agents/registry.js';
import { createRng } from '../dev/gemini-emulator/seeded.js';
import { sampleFromSchema } from '../dev/gemini-emulator/schema-sampler.js';
import { startStack, type Stack } from './helpers/stack.js';

/** The API's contract is strict: what it cannot honour it refuses up front, naming the field. */
describe('strict contracts', () => {
  let s: Stack;
  beforeAll(async () => {
    s = await startStack({
      ALLOWED_MODELS: 'gemini-2.0-flash, extra-model',
      AGENT_ROUTES: JSON.stringify({ DealScorer: { primary: 'route-primary', fallback: 'route-fallback' } }),
      MODEL_LIMITS: JSON.stringify({ 'limited-model': { rpm: 100 } }),
    });
  });
  afterAll(async () => {
    await s?.close();
  });

  const post = (payload: unknown, url = '/v1/jobs') => s.app.inject({ method: 'POST', url, headers: s.auth, payload: payload as object });
  const deal = (startupId: string, options?: Record<string, unknown>) => ({ agent: 'DealScorer', action: 'pipeline_summary', input: { startupId }, ...(options ? { options } : {}) });

  describe('unknown input fields', () => {
    const paths = (res: { json(): { details?: Array<{ path: string }> } }) => (res.json().details ?? []).map((d) => d.path);

    it('refuses an unknown field at any depth, naming its path, and enqueues nothing', async () => {
      const before = await s.runtime.queue.count();
      const res = await post({
        agent: 'RiskAnalyzer',
        action: 'analyze_risks',
        input: { startup: { name: 'Typo Co', industy: 'fintech' }, focusArea: ['market'] },
      });
      expect(res.statusCode).toBe(400);
      expect(paths(res).sort()).toEqual(['input.focusArea', 'input.startup.industy']);
      expect(res.json().details.find((d: { path: string }) => d.path === 'input.startup.industy').message).toContain('unknown field');
      // Inside arrays of objects too, and in a bulk element.
      const bulk = await post(
        { jobs: [deal('ok'), { agent: 'RiskAnalyzer', action: 'dashboard_risk_summary', input: { startupId: 's', risks: [{ title: 't', category: 'market', severity: 'low', owner: 'x' }] } }] },
        '/v1/jobs/bulk',
      );
      expect(bulk.statusCode).toBe(400);
      expect(paths(bulk)).toEqual(['jobs.1.input.risks.0.owner']);
      expect(await s.runtime.queue.count()).toBe(before);
    });

    it('every built-in action refuses an unknown field at every depth of a valid input', () => {
      const registry = s.runtime.deps.registry;
      let checked = 0;
      for (const agent of builtInAgents) {
        for (const [name, action] of Object.entries(agent.actions)) {
          expect(action.passthrough, `${agent.name}.${name} opts out`).toBeUndefined();
          const valid = sampleFromSchema(registry.schemas(agent.name, name).input, ['alpha', 'beta'], createRng(7)) as Record<string, unknown>;
          expect(() => registry.validateInput(agent.name, name, valid), `${agent.name}.${name} sample`).not.toThrow();
          // One unknown key in every object of the sample, the input itself included.
          const planted: string[] = [];
          const plant = (v: unknown, path: string[]) => {
            if (Array.isArray(v)) return v.forEach((x, i) => plant(x, [...path, String(i)]));
            if (v === null || typeof v !== 'object') return;
            for (const [k, x] of Object.entries(v)) plant(x, [...path, k]);
            (v as Record<string, unknown>).zzUnknown = true;
            planted.push(['input', ...path, 'zzUnknown'].join('.'));
          };
          plant(valid, []);
          const err = (() => {
            try {
              registry.validateInput(agent.name, name, valid);
            } catch (e) {
              return e as ValidationError;
            }
          })();
          expect(err?.details.map((d) => d.path).sort(), `${agent.name}.${name}`).toEqual(planted.sort());
          checked += 1;
        }
      }
      expect(checked).toBeGreaterThanOrEqual(7);
    });

    it('an action may open an object explicitly: its unknown fields are kept, others still refused', async () => {
      const registry = s.runtime.deps.registry;
      if (!registry.get('OpenAgent')) {
        registry.register(
          defineAgent({
            name: 'OpenAgent',
            description: 'test agent with an open metadata object',
            actions: {
              run: defineAction({
                description: 'test',
                input: z.object({ name: z.string(), metadata: z.object({ source: z.string().optional() }).optional(), items: z.array(z.object({ id: z.string() })).default([]) }),
                output: z.object({ ok: z.boolean() }),
                promptVersion: 1,
                model: 'fast',
                passthrough: ['metadata', 'items.*'],
                prompt: (input) => ({ user: input.name }),
              }),
            },
          }),
        );
      }
      const ok = await post({ agent: 'OpenAgent', action: 'run', input: { name: 'n', metadata: { source: 's', campaign: 'c' }, items: [{ id: '1', note: 'kept' }] } });
      expect(ok.statusCode).toBe(202);
      expect((await s.runtime.queue.getJob(ok.json().id))?.data.input).toEqual({ name: 'n', metadata: { source: 's', campaign: 'c' }, items: [{ id: '1', note: 'kept' }] });
      const bad = await post({ agent: 'OpenAgent', action: 'run', input: { name: 'n', nmae: 'typo', metadata: { any: 1 } } });
      expect(bad.statusCode).toBe(400);
      expect(paths(bad)).toEqual(['input.nmae']);
      // An open object takes any JSON, but not nesting no later step can serialise again (it failed the enqueue
      // with a 500): refused with where it goes too deep, nothing enqueued.
      const before = await s.runtime.queue.count();
      const deep = await s.app.inject({
        method: 'POST',
        url: '/v1/jobs',
        headers: { ...s.auth, 'content-type': 'application/json' },
        payload: `{"agent":"OpenAgent","action":"run","input":{"name":"n","metadata":{"deep":${'['.repeat(20_000)}1${']'.repeat(20_000)}}}}`,
      });
      expect(deep.statusCode).toBe(400);
      expect(deep.json().details[0]).toEqual({ path: expect.stringMatching(/^input\.metadata\.deep\.0\.0/), message: expect.stringMatching(/nested deeper than 100 levels/) });
      expect(await s.runtime.queue.count()).toBe(before);
      // Nor a number beyond a double's range: it parses to Infinity, which the job's JSON would store as null.
      const huge = await s.app.inject({
        method: 'POST',
        url: '/v1/jobs',
        headers: { ...s.auth, 'content-type': 'application/json' },
        payload: '{"agent":"OpenAgent","action":"run","input":{"name":"n","metadata":{"budget":1e400}}}',
      });
      expect(huge.statusCode).toBe(400);
      expect(huge.json().details).toEqual([{ path: 'input.metadata.budget', message: expect.stringMatching(/beyond a double's range/) }]);
      expect(await s.runtime.queue.count()).toBe(before);

      // The published schema says the same: closed input, open metadata and items.
      const res = await s.app.inject({ method: 'GET', url: '/v1/agents', headers: s.auth });
      const open = res.json().agents.find((a: { name: string }) => a.name === 'OpenAgent');
      const schema = open.actions.find((a: { name: string }) => a.name === 'run').inputSchema;
      expect(schema.additionalProperties).toBe(false);
      expect(schema.properties.metadata.additionalProperties).toBeUndefined();
      expect(schema.properties.items.items.additionalProperties).toBeUndefined();
    });

    it('GET /v1/agents publishes every built-in object input as additionalProperties: false', async () => {
      const res = await s.app.inject({ method: 'GET', url: '/v1/agents', headers: s.auth });
      expect(res.statusCode).toBe(200);
      let objects = 0;
      const open: string[] = [];
      // Every object node of the schema: those reached by properties, items, anyOf / oneOf.
      const walk = (node: Record<string, unknown> | undefined, path: string): void => {
        if (!node || typeof node !== 'object') return;
        if (node.type === 'object' && node.properties) {
          objects += 1;
          if (node.additionalProperties !== false) open.push(path);
          for (const [k, v] of Object.entries(node.properties as Record<string, Record<string, unknown>>)) walk(v, `${path}.${k}`);
        }
        if (node.items) walk(node.items as Record<string, unknown>, `${path}.*`);
        for (const k of ['anyOf', 'oneOf']) for (const v of (node[k] as Array<Record<string, unknown>> | undefined) ?? []) walk(v, path);
      };
      for (const agent of res.json().agents.filter((a: { name: string }) => builtInAgents.some((b) => b.name === a.name))) {
        for (const action of agent.actions) walk(action.inputSchema, `${agent.name}.${action.name}`);
      }
      expect(open).toEqual([]);
      // Nested objects too (startup, risks.*, deals.*...), not only each input's root.
      expect(objects).toBeGreaterThan(builtInAgents.reduce((n, a) => n + Object.keys(a.actions).length, 0));
    });
  });

  describe('options.model', () => {
    it('refuses a model nothing configures, naming options.model and the allowed values', async () => {
      const before = await s.runtime.queue.count();
      const res = await post(deal('m-1', { model: 'gpt-4' }));
      expect(res.statusCode).toBe(400);
      const detail = res.json().details.find((d: { path: string }) => d.path === 'options.model');
      expect(detail.message).toContain('allowed');
      for (const m of [s.cfg.GEMINI_MODEL_FAST, s.cfg.GEMINI_MODEL_PRO, 'gemini-2.0-flash', 'extra-model', 'route-primary', 'route-fallback', 'limited-model']) {
        expect(detail.message).toContain(m);
      }
      expect(await s.runtime.queue.count()).toBe(before);
    });

    it('accepts the tiers, route targets and fallbacks, MODEL_LIMITS models and ALLOWED_MODELS', async () => {
      for (const model of [s.cfg.GEMINI_MODEL_FAST, 'route-fallback', 'limited-model', 'extra-model']) {
        const res = await post(deal(`m-ok-${model}`, { model }));
        expect(res.statusCode, model).toBe(202);
      }
    });

    it('names the element of a bulk request', async () => {
      const res = await post({ jobs: [deal('b-1'), deal('b-2', { model: 'claude-3' })] }, '/v1/jobs/bulk');
      expect(res.statusCode).toBe(400);
      expect(res.json().details.map((d: { path: string }) => d.path)).toContain('jobs.1.options.model');
    });

    it('applies to flows and to the direct producer', async () => {
      const flow = await s.app.inject({
        method: 'POST',
        url: '/v1/flows/parallel',
        headers: s.auth,
        payload: { tasks: [deal('f-1'), deal('f-2')], options: { model: 'gpt-4' } },
      });
      expect(flow.statusCode).toBe(400);
      expect(flow.json().details.map((d: { path: string }) => d.path)).toEqual(['tasks.0.options.model', 'tasks.1.options.model']);

      const producer = await createDirectProducer({ redisTarget: s.cfg.REDIS_URL, prefix: s.cfg.QUEUE_PREFIX });
      try {
        const err = await producer.enqueue(deal('d-1', { model: 'gpt-4' }), { orgId: s.orgId }).catch((e: unknown) => e);
        expect(err).toBeInstanceOf(ValidationError);
        expect((err as ValidationError).details[0].path).toBe('options.model');
        await expect(producer.enqueue(deal('d-2', { model: s.cfg.GEMINI_MODEL_PRO }), { orgId: s.orgId })).resolves.toMatchObject({ state: 'waiting' });
      } finally {
        await producer.close();
      }
    });
  });

  describe('idempotencyKey', () => {
    it('returns the existing job for the same request, whatever its key order', async () => {
      const first = await post({ agent: 'DealScorer', action: 'pipeline_summary', input: { startupId: 'i-1', deals: [] }, options: { idempotencyKey: 'same-1', priority: 3 } });
      expect(first.statusCode).toBe(202);
      const again = await post({ options: { priority: 3, idempotencyKey: 'same-1' }, input: { deals: [], startupId: 'i-1' }, action: 'pipeline_summary', agent: 'DealScorer' });
      expect(again.statusCode).toBe(202);
      expect(again.json().id).toBe(first.json().id);
    });

    it('answers 409 naming the existing job for a different request under the same key', async () => {
      const first = await post(deal('i-2', { idempotencyKey: 'reused-2' }));
      expect(first.statusCode).toBe(202);
      const id = first.json().id as string;
      for (const other of [
        deal('i-2-other', { idempotencyKey: 'reused-2' }),
        deal('i-2', { idempotencyKey: 'reused-2', priority: 1 }),
        deal('i-2', { idempotencyKey: 'reused-2', model: 'extra-model' }),
        { agent: 'RiskAnalyzer', action: 'analyze_risks', input: { startup: { name: 'i-2' } }, options: { idempotencyKey: 'reused-2' } },
      ]) {
        const res = await post(other);
        expect(res.statusCode).toBe(409);
        expect(res.json()).toMatchObject({ jobId: id });
        expect(res.json().error).toContain(id);
      }
      // The stored job is untouched.
      const view = (await s.app.inject({ method: 'GET', url: `/v1/jobs/${id}`, headers: s.auth })).json();
      expect(view).toMatchObject({ agent: 'DealScorer', state: 'waiting' });
      expect((await s.runtime.queue.getJob(id))?.data.input).toMatchObject({ startupId: 'i-2' });
    });

    it('refuses a bulk request whole when one element reuses a key for another request', async () => {
      await post(deal('i-3', { idempotencyKey: 'reused-3' }));
      const before = await s.runtime.queue.count();
      const res = await post({ jobs: [deal('i-3-new'), deal('i-3-changed', { idempotencyKey: 'reused-3' })] }, '/v1/jobs/bulk');
      expect(res.statusCode).toBe(409);
      expect(res.json().jobId).toMatch(/^idem-/);
      expect(await s.runtime.queue.count()).toBe(before);
    });

    it('refuses a bulk request whole when two of its elements name one key for different requests; the same request twice is one job', async () => {
      const before = await s.runtime.queue.count();
      const res = await post({ jobs: [deal('i-5-new'), deal('i-5-a', { idempotencyKey: 'twice-5' }), deal('i-5-b', { idempotencyKey: 'twice-5' })] }, '/v1/jobs/bulk');
      expect(res.statusCode).toBe(409);
      expect(res.json().jobId).toMatch(/^idem-/);
      expect(await s.runtime.queue.count()).toBe(before);
      const same = await post({ jobs: [deal('i-6', { idempotencyKey: 'twice-6' }), deal('i-6', { idempotencyKey: 'twice-6' })] }, '/v1/jobs/bulk');
      expect(same.statusCode).toBe(202);
      const [a, b] = same.json().jobs as Array<{ id: string }>;
      expect(a.id).toBe(b.id);
      expect(await s.runtime.queue.count()).toBe(before + 1);
    });

    it('a bulk request of 1,000 jobs is stored by one script call: a failure stores none of it', async () => {
      const raw = s.runtime.deps.cells[0].scheduler!.raw;
      const orig = raw.enqueue.bind(raw);
      let calls = 0;
      raw.enqueue = async (...a: Parameters<typeof orig>) => {
        if (++calls > 1) throw new Error('Connection is closed.');
        return orig(...a);
      };
      try {
        const before = await s.runtime.queue.count();
        const ok = await post({ jobs: Array.from({ length: 1000 }, (_, i) => deal(`bulk-${i}`)) }, '/v1/jobs/bulk');
        expect(ok.statusCode).toBe(202);
        expect({ calls, stored: (await s.runtime.queue.count()) - before }).toEqual({ calls: 1, stored: 1000 });
        calls = 1;
        const failed = await post({ jobs: Array.from({ length: 1000 }, (_, i) => deal(`bulk-failed-${i}`)) }, '/v1/jobs/bulk');
        expect(failed.statusCode).toBe(503);
        expect((await s.runtime.queue.count()) - before).toBe(1000);
      } finally {
        raw.enqueue = orig;
      }
    });

    it('keys stay per org: another org may use the same key for another request', async () => {
      await post(deal('i-4', { idempotencyKey: 'shared-4' }));
      const other = await s.newKey();
      const res = await s.app.inject({ method: 'POST', url: '/v1/jobs', headers: { authorization: `Bearer ${other}` }, payload: deal('i-4-other', { idempotencyKey: 'shared-4' }) });
      expect(res.statusCode).toBe(202);
    });
  });
});
