import { connect, createServer, type AddressInfo, type Server, type Socket } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startStack, TEST_ENV, type Stack } from './helpers/stack.js';
import { spawnAgentq, stopProcess, type AgentqProcess } from './helpers/processes.js';
import { until, within } from './helpers/wait.js';

/**
 * A TCP proxy to Redis that holds back Redis's replies on every connection once a request carrying `marker` went
 * through it, until `pass()`: start-up is then held on that request (the eviction policy check), a point where
 * every earlier step is done and nothing has started serving.
 */
async function replyHold(target: URL, marker: string) {
  const sockets: Socket[] = [];
  const held: Array<{ client: Socket; data: Buffer[] }> = [];
  let passing = false;
  let seen = 0;
  const server: Server = createServer((client) => {
    const upstream = connect(Number(target.port), target.hostname);
    sockets.push(client, upstream);
    let hold: Buffer[] | undefined;
    client.on('data', (d: Buffer) => {
      if (!passing && !hold && d.includes(marker)) {
        hold = [];
        held.push({ client, data: hold });
        seen++;
      }
      upstream.write(d);
    });
    upstream.on('data', (d: Buffer) => (hold && !passing ? hold.push(d) : client.write(d)));
    for (const s of [client, upstream]) {
      s.on('error', () => undefined);
      s.on('close', () => (client.destroy(), upstream.destroy()));
    }
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    url: `redis://127.0.0.1:${(server.address() as AddressInfo).port}`,
    holding: () => seen > 0,
    pass() {
      passing = true;
      for (const h of held.splice(0)) for (const d of h.data) h.client.write(d);
    },
    close: () => new Promise<void>((resolve) => {
      sockets.forEach((s) => s.destroy());
      server.close(() => resolve());
    }),
  };
}

describe('a termination signal during start-up', () => {
  let s: Stack;
  const children: AgentqProcess[] = [];
  const holds: Array<Awaited<ReturnType<typeof replyHold>>> = [];
  beforeAll(async () => {
    s = await startStack();
  });
  afterAll(async () => {
    await Promise.all(children.map((c) => stopProcess(c)));
    await Promise.all(holds.map((h) => h.close()));
    await s?.close();
  });

  const startHeld = async (env: Record<string, string> = {}) => {
    const hold = await replyHold(new URL(s.cfg.REDIS_URL), 'maxmemory-policy');
    holds.push(hold);
    const p = spawnAgentq('worker', {
      ...TEST_ENV,
      REDIS_URL: hold.url,
      REDIS_AUTOSTART: 'false',
      DATABASE_URL: s.cfg.DATABASE_URL!,
      QUEUE_PREFIX: s.cfg.QUEUE_PREFIX,
      GEMINI_API_KEY: 'test-key-not-real',
      GOOGLE_GEMINI_BASE_URL: s.emulator.url,
      ...env,
    });
    children.push(p);
    await until('the process to reach the eviction policy check of its start-up', () => hold.holding(), 120_000);
    return { p, hold };
  };

  it('lets the step in progress end, starts nothing more, and exits 0', async () => {
    const { p, hold } = await startHeld();
    p.kill('SIGTERM');
    await p.waitForLog((l) => l.msg === 'stopping during start-up: once the step in progress ends, nothing more starts', 30_000);
    hold.pass();
    expect(await within(p.exited, 60_000, 'the process to exit once its start-up step ended')).toBe(0);
    const said = p.lines.map((l) => l.msg);
    expect(said).toContain('stopped');
    // Nothing started serving: no worker, no migration run after the held step.
    expect(said).not.toContain('worker started');
    expect(p.stderr()).toBe('');
  });

  it('exits 1 at the shutdown deadline when the step in progress never ends, naming it', async () => {
    const { p } = await startHeld({ SHUTDOWN_GRACE_MS: '100' });
    p.kill('SIGTERM');
    expect(await within(p.exited, 60_000, 'the process to exit at its shutdown deadline')).toBe(1);
    const deadline = p.lines.find((l) => l.msg === 'shutdown deadline passed; exiting with closes still pending');
    expect(deadline?.pending).toEqual(['start-up step']);
    expect(p.lines.map((l) => l.msg)).not.toContain('worker started');
  });
});
