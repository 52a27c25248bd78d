import { Job, Queue } from 'bullmq';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { exitGuard, exitWithin, KILLED_EXIT_MS, spawnNpmScript, stopProcess, type AgentqProcess } from '../helpers/processes.js';
import { SHUTDOWN_MARGIN_MS } from '../../src/app/shutdown.js';
import { processEnv, riskJob } from '../helpers/faults.js';
import { startStack, type Stack } from '../helpers/stack.js';
import { freePort } from '../../src/shared/infra/redis/redis-server.js';
import { until } from '../helpers/wait.js';

/** The drain's grace (SHUTDOWN_GRACE_MS); told to stop, agentq exits by it and the shutdown margin, then npm closes. */
const GRACE_MS = 20_000;
const DRAIN_EXIT_MS = GRACE_MS + SHUTDOWN_MARGIN_MS + KILLED_EXIT_MS;

const alive = (pid: number) => {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
};

/**
 * `npm start`, `npm run api` and `npm run worker` as a user runs them: the signal goes to the npm process,
 * and must reach agentq (npm runs the script through `sh -c`, which must `exec` node, or the shell dies
 * and leaves the app orphaned, undrained).
 */
describe('npm scripts forward SIGTERM / SIGINT to agentq', () => {
  let s: Stack;
  let queue: Queue;
  let env: Record<string, string>;
  const children: AgentqProcess[] = [];

  beforeAll(async () => {
    s = await startStack();
    queue = new Queue('agent-jobs', { connection: { url: s.cfg.REDIS_URL }, prefix: s.cfg.QUEUE_PREFIX });
    env = processEnv(s, { SHUTDOWN_GRACE_MS: String(GRACE_MS), WORKER_CONCURRENCY: '2' });
  });
  afterAll(async () => {
    await Promise.all(children.map((c) => stopProcess(c, 5000)));
    await queue?.close();
    await s?.close();
  });

  const run = (script: string, extra: Record<string, string> = {}) => {
    const p = spawnNpmScript(script, { ...env, ...extra });
    children.push(p);
    return p;
  };
  /** The pid agentq logs with every line: the app process, whatever npm and the shell did. */
  const appPid = (p: AgentqProcess) => p.lines[0].pid as number;

  it('npm run worker + SIGTERM to npm: the in-flight job finishes, agentq logs its drain, npm exits 0, nothing left running', async () => {
    const worker = run('worker');
    await worker.waitForLog((l) => l.msg === 'worker started', 180_000);
    const pid = appPid(worker);
    expect(pid).not.toBe(worker.child.pid);
    // One call held for 1.5 s by the emulator: the job is mid-call when the signal arrives.
    s.emulator.script({ latencyMs: 1500, match: { promptIncludes: 'npm-term-' }, times: 1 });
    const res = await s.app.inject({ method: 'POST', url: '/v1/jobs', headers: s.auth, payload: riskJob('npm-term-a') });
    expect(res.statusCode).toBe(202);
    const id = res.json().id as string;
    await until('the job to be mid-call in the worker', async () => s.emulator.calls().some((c) => c.kind === 'generate'), 30_000);
    worker.kill('SIGTERM');
    expect(await exitWithin(worker, DRAIN_EXIT_MS, 'npm run worker to exit after SIGTERM')).toBe(0);
    const msgs = worker.lines.map((l) => l.msg);
    expect(worker.lines.find((l) => String(l.msg).startsWith('shutting down'))).toMatchObject({ signal: 'SIGTERM', pid });
    expect(msgs.indexOf('job completed')).toBeGreaterThan(msgs.findIndex((m) => String(m).startsWith('shutting down')));
    expect(msgs.at(-1)).toBe('stopped');
    expect(await (await Job.fromId(queue, id))!.getState()).toBe('completed');
    expect(alive(pid)).toBe(false);
  }, 120_000 + exitGuard(DRAIN_EXIT_MS));

  it('npm start + SIGINT and npm run api + SIGTERM: both drain and exit 0, no orphan', async () => {
    // PORT is 1..65535: each API listens on a port of its own.
    const cases = [
      { p: run('start', { PORT: String(await freePort()) }), ready: 'worker started', signal: 'SIGINT' as const },
      { p: run('api', { PORT: String(await freePort()) }), ready: 'API listening', signal: 'SIGTERM' as const },
    ];
    await Promise.all(
      cases.map(async ({ p, ready, signal }) => {
        await p.waitForLog((l) => l.msg === ready, 60_000);
        const pid = appPid(p);
        p.kill(signal);
        expect(await exitWithin(p, DRAIN_EXIT_MS, `npm (${ready}) to exit after ${signal}`)).toBe(0);
        expect(p.lines.find((l) => String(l.msg).startsWith('shutting down'))).toMatchObject({ signal, pid });
        expect(p.lines.at(-1)!.msg).toBe('stopped');
        expect(alive(pid)).toBe(false);
      }),
    );
  }, 120_000 + exitGuard(DRAIN_EXIT_MS));
});
