import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { nodeArgsFor } from './transpiled.js';

const ROOT = fileURLToPath(new URL('../..', import.meta.url));
/** How long a CLI run is given to exit. */
const CLI_EXIT_MS = 180_000;

/** Runs a CLI script (its transpiled twin, or through tsx: `nodeArgsFor`) with `...args` from the repo root; resolves with exit code and output. */
export function runCli(script: string, args: string[], env: Record<string, string | undefined>): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const childEnv: NodeJS.ProcessEnv = { ...process.env, LOG_LEVEL: 'warn', ...env };
    for (const [k, v] of Object.entries(env)) if (v === undefined) delete childEnv[k];
    const child = spawn(process.execPath, [...nodeArgsFor(script), ...args], { cwd: ROOT, env: childEnv, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d) => (stdout += d));
    child.stderr.on('data', (d) => (stderr += d));
    // An upper bound for a process that never ends, above what a busy machine needs to start one: killed, and the
    // run fails naming the script (an exit code of null read as a failed assertion named nothing).
    let late = false;
    const timer = setTimeout(() => {
      late = true;
      child.kill('SIGKILL');
    }, CLI_EXIT_MS);
    child.on('error', reject);
    child.on('close', (code) => {
      clearTimeout(timer);
      if (late) reject(new Error(`${script} ${args.join(' ')} did not exit within ${CLI_EXIT_MS} ms (SIGKILLed); stderr: ${stderr.slice(-2000)}`));
      else resolve({ code, stdout, stderr });
    });
  });
}
