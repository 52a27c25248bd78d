import { spawn, type ChildProcess } from 'node:child_process';
import { createInterface } from 'node:readline';
import { randomUUID } from 'node:crypto';
import { Job, Queue } from 'bullmq';
import { afterAll, afterEach, beforeAll, describe, expect, it, vi } from 'vitest';
import { QUEUE } from '../src/shared/core/queue-names.js';
import { startStack, type Stack } from './helpers/stack.js';
import { POLL, within } from './helpers/wait.js';
import { usageWritten } from './helpers/usage.js';
import { nodeArgsFor } from './helpers/transpiled.js';
import { exitGuard, exitWithin, KILLED_EXIT_MS } from './helpers/processes.js';

/** How long the second worker process is given to close its worker and connections and exit once told SIGTERM. */
const TERM_EXIT_MS = 30_000;

/** One latency-only fault per step prompt tags each step's model calls (`fault: "latency:N"`) without changing them. */
const STEP_PROMPTS = { profile: 'Extract the profile.', risks: 'Analyse the risks of this startup.', tasks: 'Build the plan for this startup.' } as const;
const STEP_TAG = { profile: 'latency:1', risks: 'latency:2', tasks: 'latency:3' } as const;
const STEPS = ['profile', 'risks', 'tasks'] as const;

interface Worker {
  child: ChildProcess;
  lines: Array<Record<string, unknown>>;
  /** Resolves with the first protocol line (already read or still to come) that matches. */
  line(pred: (line: Record<string, unknown>) => boolean, ms?: number): Promise<Record<string, unknown>>;
  /** Resolves once the process has ended and all its output has been read. */
  closed: Promise<void>;
}

describe('pipeline run survives a killed worker process', () => {
  let s: Stack;
  const children: ChildProcess[] = [];

  beforeAll(async () => {
    // API only: every worker (agent and flows) runs in the child processes below.
    s = await startStack({}, { worker: false });
    s.emulator.script(STEPS.map((st, i) => ({ latencyMs: i + 1, match: { promptIncludes: STEP_PROMPTS[st] }, times: -1 })));
  });
  afterEach(() => {
    for (const c of children.splice(0)) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
  });
  afterAll(async () => s?.close());

  function startWorker(hangAt?: string): Worker {
    const child = spawn(process.execPath, nodeArgsFor('test/fixtures/flows-worker-process.ts'), {
      env: {
        ...process.env,
        NODE_ENV: 'test',
        REDIS_URL: s.cfg.REDIS_URL,
        DATABASE_URL: s.cfg.DATABASE_URL,
        QUEUE_PREFIX: s.cfg.QUEUE_PREFIX,
        GEMINI_API_KEY: 'x',
        GOOGLE_GEMINI_BASE_URL: s.emulator.url,
        LOCK_DURATION_MS: '2000',
        STALLED_INTERVAL_MS: '1000',
        BACKOFF_BASE_MS: '50',
        // As the stack's own (helpers/stack.ts): the killed process's unacknowledged usage rows are taken over by
        // the next one's sink after this long, not the production default of 30 s.
        USAGE_SINK_CLAIM_IDLE_MS: '2000',
        ...(hangAt ? { HANG_AT: hangAt } : {}),
      },
      stdio: ['ignore', 'pipe', 'inherit'],
    });
    children.push(child);
    const lines: Array<Record<string, unknown>> = [];
    const reader = createInterface({ input: child.stdout! });
    reader.on('line', (l) => {
      try {
        lines.push(JSON.parse(l));
      } catch {
        // Not protocol output.
      }
    });
    const closed = new Promise<void>((resolve) => child.once('close', () => resolve()));
    return {
      child,
      lines,
      closed,
      line: (pred, ms = 60_000) =>
        within(
          new Promise((resolve, reject) => {
            const seen = lines.find(pred);
            if (seen) return resolve(seen);
            const onLine = () => {
              const hit = lines.find(pred);
              if (!hit) return;
              reader.off('line', onLine);
              resolve(hit);
            };
            // Registered after the parser above, so `lines` already holds the new line.
            reader.on('line', onLine);
            void closed.then(() => reject(new Error('the worker process ended before the line')));
          }),
          ms,
          'a line from the worker process',
        ),
    };
  }

  it.each([
    // After step 1 completed and was checkpointed, before step 2's job exists.
    { hangAt: 'profile:step-finished', waitForRisks: false },
    // After step 2's job was created (and then completed by the agent worker), before the run saw it.
    { hangAt: 'risks:child-added', waitForRisks: true },
  ])('resumes after SIGKILL at $hangAt without re-running a finished step', async ({ hangAt, waitForRisks }) => {
    s.emulator.resetCalls();
    const first = startWorker(hangAt);
    await first.line((l) => l.ready === true);

    const input = { companyName: `Crashco ${randomUUID().slice(0, 8)}`, answers: [{ question: 'What do you do?', answer: 'Cold-chain monitoring for pharmacies.' }] };
    const post = await s.app.inject({ method: 'POST', url: '/v1/pipelines/wizard_completion', headers: s.auth, payload: { input } });
    expect(post.statusCode).toBe(202);
    const runId: string = post.json().id;
    await first.line((l) => (l.hanging as { runId?: string } | undefined)?.runId === runId);
    if (waitForRisks) await vi.waitFor(async () => expect(await s.runtime.queue.getJobState(`${runId}-risks`), 'risks step job').toBe('completed'), POLL);
    else expect(await s.runtime.queue.getJobState(`${runId}-risks`)).toBe('unknown');

    // The run is active, its lock held by the process about to die.
    const before = (await s.app.inject({ method: 'GET', url: `/v1/pipelines/runs/${runId}`, headers: s.auth })).json();
    expect(before.state).toBe('active');
    expect(before.steps[0].state).toBe('completed');
    first.child.kill('SIGKILL');
    await exitWithin({ child: first.child, exited: first.closed }, KILLED_EXIT_MS, 'the first worker process to close once SIGKILLed');

    const second = startWorker();
    await second.line((l) => l.ready === true);
    const view = (await s.app.inject({ method: 'GET', url: `/v1/pipelines/runs/${runId}?waitMs=40000`, headers: s.auth })).json();
    expect(view.state).toBe('completed');
    expect(view.result.success).toBe(true);
    expect(Object.keys(view.result.outputs).sort()).toEqual(['profile', 'risks', 'tasks']);
    // The second process finished what the first started: it recovered the stalled run. (Its line may still
    // be in the pipe when the API already answers, so it is awaited, with an upper bound.)
    await second.line((l) => l.runId === runId && l.stepId === 'tasks' && l.event === 'step-finished', 30_000);
    const flows = new Queue(QUEUE.flows, { connection: s.runtime.deps.redis, prefix: s.cfg.QUEUE_PREFIX });
    expect((await Job.fromId(flows, runId))?.stalledCounter).toBeGreaterThanOrEqual(1);
    await flows.close();

    // Each step's agent job ran exactly once: one model call per step prompt, one agent_runs row per job.
    const calls = s.emulator.calls().filter((c) => c.kind === 'generate' || c.kind === 'stream');
    for (const st of STEPS) expect(calls.filter((c) => c.fault === STEP_TAG[st]).length, `model calls for ${st}`).toBe(1);
    await usageWritten(s);
    const { rows } = await s.infra.db.pool.query('SELECT job_id, state FROM agent_runs WHERE job_id = ANY($1) ORDER BY job_id', [STEPS.map((st) => `${runId}-${st}`)]);
    expect(rows.map((r) => [r.job_id, r.state])).toEqual(STEPS.map((st) => [`${runId}-${st}`, 'completed']).sort());

    second.child.kill('SIGTERM');
    await exitWithin({ child: second.child, exited: second.closed }, TERM_EXIT_MS, 'the second worker process to exit on SIGTERM');
    expect(second.child.exitCode).toBe(0);
  }, 90_000 + exitGuard(KILLED_EXIT_MS) + exitGuard(TERM_EXIT_MS));
});
