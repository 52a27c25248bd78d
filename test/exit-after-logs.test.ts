import { spawn } from 'node:child_process';
import { describe, expect, it } from 'vitest';
import { nodeArgsFor } from './helpers/transpiled.js';

/** The messages of the child's log lines in the order written, and its exit code (see the fixture). */
function runChild(mode: 'helper' | 'flush'): Promise<{ msgs: unknown[]; code: number | null }> {
  const child = spawn(process.execPath, [...nodeArgsFor('test/fixtures/exit-after-logs-child.ts'), mode], {
    env: { ...process.env, UV_THREADPOOL_SIZE: '1' },
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  let out = '';
  child.stdout.on('data', (c: Buffer) => (out += c.toString()));
  return new Promise((resolve) =>
    child.once('close', (code) => resolve({ msgs: out.trim().split('\n').map((l) => (JSON.parse(l) as { msg: unknown }).msg), code })),
  );
}

describe('the process exit after the shutdown (main.ts, exit-after-logs.ts)', () => {
  it('waits for the line in flight: the shutdown\'s lines come out in order, `stopped` last, the exit code kept', async () => {
    const { msgs, code } = await runChild('helper');
    expect(code).toBe(0);
    expect(msgs).toEqual(['started', 'shutting down', 'stopped']);
  }, 60_000);

  it("control: pino's flush callback then process.exit, as main.ts exited before, puts `stopped` before the line in flight (the fixture makes the race happen)", async () => {
    const { msgs, code } = await runChild('flush');
    expect(code).toBe(0);
    expect(msgs).toEqual(['started', 'stopped', 'shutting down']);
  }, 60_000);
});
