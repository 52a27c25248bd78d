import { randomUUID } from 'node:crypto';
import { afterAll, afterEach, beforeAll, describe, expect, it, vi } from 'vitest';
import { defaultFeatures } from '../src/app/features.js';
import { createOrchestrationFeature, orchestrationFeature } from '../src/app/features/orchestration.js';
import type { PipelineProgressEvent } from '../src/workers/flows/pipeline-runner.js';
import { QUEUE } from '../src/shared/core/queue-names.js';
import { orgWithHeldSlot } from './helpers/fair.js';
import { startStack, type Stack } from './helpers/stack.js';
import { POLL, waitsTimeout } from './helpers/wait.js';

/**
 * A pipeline run's step job that goes away or fails while the run is not parked on it: removed before it ran
 * (not through the API's cancel, which leaves a tombstone), or failed just as a run picked up again (its retry,
 * a crash's recovery) attaches to it. The run must read both as the step's failure, never make the step again
 * (it would run and bill a job its remover took away) nor wait for it forever.
 */
describe('pipeline steps that end while the run is not waiting on them', () => {
  let s: Stack;
  let onProgress: ((e: PipelineProgressEvent) => void | Promise<void>) | undefined;
  beforeAll(async () => {
    const features = [...defaultFeatures.filter((f) => f !== orchestrationFeature), createOrchestrationFeature({ onProgress: (e) => onProgress?.(e) })];
    s = await startStack({}, { worker: true, features });
  });
  afterEach(() => {
    onProgress = undefined;
    s.emulator.clearFaults();
  });
  afterAll(async () => s?.close());

  const cell = () => s.runtime.deps.cells[0];
  const state = (id: string) => cell().queue.getJobState(id);
  const flowState = (id: string) => s.runtime.deps.redis.zscore(`${s.cfg.QUEUE_PREFIX}:${QUEUE.flows}:waiting-children`, id);
  const hangs = () => s.emulator.calls().filter((c) => c.fault === 'hang').length;
  const cancel = (id: string, key: string) => s.app.inject({ method: 'DELETE', url: `/v1/jobs/${id}`, headers: { authorization: `Bearer ${key}` } });
  const startRun = async (key: string, companyName: string) => {
    const input = { companyName, answers: [{ question: 'What do you build?', answer: 'Cold-chain sensors for pharmacies.' }] };
    const post = await s.app.inject({ method: 'POST', url: '/v1/pipelines/wizard_completion', headers: { authorization: `Bearer ${key}` }, payload: { input } });
    expect(post.statusCode).toBe(202);
    return post.json().id as string;
  };
  const settledRun = async (id: string, key: string) =>
    (await s.app.inject({ method: 'GET', url: `/v1/pipelines/runs/${id}?waitMs=20000`, headers: { authorization: `Bearer ${key}` } })).json();

  it('fails a step whose job was removed before it ran, and does not make that job again', async () => {
    // An org capped at one job, its slot held by a job whose model call hangs: the run's first step waits parked.
    const { key, busy } = await orgWithHeldSlot(s);

    const company = `Removed Step ${randomUUID().slice(0, 8)}`;
    // Tags any model call of the run (a latency-only fault changes nothing else).
    s.emulator.script({ latencyMs: 7, match: { promptIncludes: company }, times: -1 });
    const runId = await startRun(key, company);
    const stepId = `${runId}-profile`;
    await vi.waitFor(async () => {
      expect(await state(stepId)).toBe('delayed');
      expect(await flowState(runId)).not.toBeNull();
    }, POLL);

    // Removed in BullMQ alone (Bull Board's remove, an operator's script): no tombstone of the API's cancel.
    await (await cell().queue.getJob(stepId))!.remove();
    expect((await cancel(busy, key)).statusCode).toBe(202);

    const view = await settledRun(runId, key);
    expect(view.state).toBe('failed');
    expect(view.steps.map((st: { state: string }) => st.state)).toEqual(['failed', 'skipped', 'skipped']);
    expect(view.errors.profile).toMatch(/removed before it finished/);
    // Not made again: nothing ran or was billed for it.
    expect(await state(stepId)).toBe('unknown');
    expect(s.emulator.calls().filter((c) => c.fault === 'latency:7')).toEqual([]);
  }, waitsTimeout(POLL.timeout, POLL.timeout));

  it('ends the run when its step fails just as the run, picked up again, attaches to it', async () => {
    const key = s.apiKey;
    const company = `Reattached ${randomUUID().slice(0, 8)}`;
    const before = hangs();
    s.emulator.script({ hang: true, match: { promptIncludes: company } });
    let runId: string | undefined;
    // The run's first attempt dies right after adding its step (as a crash or a Redis error there would): it is
    // picked up again by its retry while the step's model call is held.
    let died = false;
    onProgress = (e) => {
      if (e.stepId === 'profile' && e.event === 'child-added' && !died) {
        died = true;
        throw new Error('run attempt died after adding its step');
      }
    };
    // What the picked-up run does to reach a step job that exists (whichever producer call that is) first waits
    // for the step to fail: it is cancelled while it runs, which fails it for good.
    const producer = s.runtime.deps.producer as unknown as Record<string, (...args: unknown[]) => Promise<unknown>>;
    let failedFirst = false;
    const failStepFirst = async (prepared: unknown) => {
      const id = (prepared as Array<{ opts: { jobId: string } }>)[0]?.opts.jobId;
      if (!runId || id !== `${runId}-profile` || failedFirst || (await state(id)) === 'unknown') return;
      failedFirst = true;
      // Running: its model call is held.
      await vi.waitFor(() => expect(hangs()).toBe(before + 1), POLL);
      expect((await cancel(id, key)).statusCode).toBe(202);
      await vi.waitFor(async () => expect(await state(id)).toBe('failed'), POLL);
    };
    const originals = new Map<string, (...args: unknown[]) => Promise<unknown>>();
    for (const name of ['add', 'relane']) {
      const original = producer[name];
      if (!original) continue;
      originals.set(name, original);
      producer[name] = async (...args: unknown[]) => {
        await failStepFirst(args[0]);
        return original(...args);
      };
    }
    try {
      runId = await startRun(key, company);
      await vi.waitFor(() => expect(hangs()).toBe(before + 1), POLL);
      const view = await settledRun(runId, key);
      expect(failedFirst).toBe(true);
      expect(view.state).toBe('failed');
      expect(view.error).toMatch(/step "profile" failed: cancelled/);
      expect(view.steps.map((st: { state: string }) => st.state)).toEqual(['failed', 'skipped', 'skipped']);
    } finally {
      for (const [name, original] of originals) producer[name] = original;
      if (runId && (await state(`${runId}-profile`)) === 'active') await cancel(`${runId}-profile`, key);
    }
  }, waitsTimeout(POLL.timeout, 20_000));
});
