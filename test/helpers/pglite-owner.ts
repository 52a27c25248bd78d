import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { stopProcess, watch, type AgentqProcess } from './processes.js';
import { nodeArgsFor } from './transpiled.js';

const FIXTURE = fileURLToPath(new URL('../fixtures/shared-db-process.ts', import.meta.url));

/** What a process logs when it reaches the data dir through its owner's socket instead of opening it. */
export const USING_OTHER = 'using the embedded PGlite owned by another local agentq process';
export const TOOK_OVER = 'took over the embedded PGlite lock of a process that is gone';

export const lockFile = (dir: string) => join(dir, 'pglite.lock');
export const ownerFile = (dir: string) => join(dir, 'pglite.json');
export const send = (p: AgentqProcess, line: string) => p.child.stdin!.write(line + '\n');
export const pidOf = (p: AgentqProcess) => p.child.pid!;
/** The process's first `count` answer (or its failure) logged at or after line `from`. */
export const answerOf = (p: AgentqProcess, from: number) =>
  p.waitForLog((l) => p.lines.indexOf(l) >= from && (l.msg === 'count' || l.msg === 'count failed'), 240_000);

/**
 * The first `count` a process connected through an owner sends after that owner was SIGKILLed, from line `from`.
 * The pool's idle connection to the dead owner closes under it, and the pool hears that as an event: a query taken
 * from the pool in the same turn of the event loop (the kill and the command arriving together, on a loaded
 * machine) goes out on that dead connection and fails with it, as a query on any pooled connection does when its
 * Postgres goes away (seen in a fresh-clone CI run, 2026-12-06 22:58). Only that failure is asked again, once:
 * every other answer, and a second failure, is returned as it is.
 */
export async function firstCountAfterKill(p: AgentqProcess, command: string): Promise<Record<string, unknown>> {
  const from = p.lines.length;
  send(p, command);
  const answer = await answerOf(p, from);
  if (answer.msg !== 'count failed' || !/Connection terminated/.test(String(answer.err))) return answer;
  const again = p.lines.length;
  send(p, command);
  return answerOf(p, again);
}

/**
 * Data dirs and processes of the embedded-PGlite ownership fault files (test/fixtures/shared-db-process.ts driven
 * over stdin), with one `close` for the file's afterAll.
 */
export function pgliteOwners() {
  const dirs: string[] = [];
  const procs: AgentqProcess[] = [];
  return {
    newDir(): string {
      const d = mkdtempSync(join(tmpdir(), 'agentq-owner-'));
      dirs.push(d);
      return d;
    },
    spawnFixture(dir: string, openAtOnce = false): AgentqProcess {
      // The pool's connect bound as a hang's, not production's 10 s: a query that finds its owner gone waits for the
      // takeover (PGlite booting the data dir and recovering it after a SIGKILL), which a slow or loaded machine has
      // taken past 10 s (a quiet CI run, 2026-12-06: "count failed" on the first query after the kill).
      const env = { ...process.env, PG_CONNECT_TIMEOUT_MS: '120000', PG_QUERY_TIMEOUT_MS: '120000' };
      const p = watch(spawn(process.execPath, [...nodeArgsFor(FIXTURE), dir, ...(openAtOnce ? ['open'] : [])], { stdio: ['pipe', 'pipe', 'pipe'], env }));
      procs.push(p);
      return p;
    },
    async close(): Promise<void> {
      await Promise.all(procs.map((p) => stopProcess(p, 2000)));
      for (const d of dirs) rmSync(d, { recursive: true, force: true });
    },
  };
}
