import { EventEmitter } from 'node:events';
import { readdirSync, readFileSync } from 'node:fs';
import { join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { logConnectionErrors } from '../src/shared/infra/redis/connection.js';
import { duplicateKeys } from './helpers/log-lines.js';
import { captureLogs } from './helpers/ops.js';

const SRC = fileURLToPath(new URL('../src', import.meta.url));

describe('logConnectionErrors: BullMQ error events in the JSON log', () => {
  afterEach(() => vi.useRealTimers());

  it('logs an error the first time, the same error again at most once per window with how many were left out, another error at once', () => {
    vi.useFakeTimers({ toFake: ['Date'] });
    const logs = captureLogs();
    const emitter = new EventEmitter();
    logConnectionErrors(emitter, logs.logger, 'maintenance worker', { msg: 'maintenance worker error', everyMs: 10_000 });
    const refused = () => emitter.emit('error', new Error('connect ECONNREFUSED 127.0.0.1:6379'));
    // An outage: each reconnect attempt of each connection emits one, every 2 s or less.
    for (let t = 0; t < 25_000; t += 500) {
      vi.setSystemTime(t);
      refused();
      if (t === 3000) emitter.emit('error', new Error('Missing lock for job 7. moveToFinished'));
    }
    const lines = logs.lines().map(({ msg, source, err, repeated }) => ({ msg, source, err, repeated }));
    expect(lines).toEqual([
      { msg: 'maintenance worker error', source: 'maintenance worker', err: 'connect ECONNREFUSED 127.0.0.1:6379', repeated: undefined },
      // Another error is not held behind the outage's repeats.
      { msg: 'maintenance worker error', source: 'maintenance worker', err: 'Missing lock for job 7. moveToFinished', repeated: undefined },
      { msg: 'maintenance worker error', source: 'maintenance worker', err: 'connect ECONNREFUSED 127.0.0.1:6379', repeated: 19 },
      { msg: 'maintenance worker error', source: 'maintenance worker', err: 'connect ECONNREFUSED 127.0.0.1:6379', repeated: 19 },
    ]);
    expect(logs.lines().map((l) => l.level)).toEqual([40, 40, 40, 40]);
  });

  it("names the object in `source`, never a second `component` beside the feature logger's own", () => {
    const logs = captureLogs();
    const emitter = new EventEmitter();
    logConnectionErrors(emitter, logs.logger.child({ component: 'ops' }), 'flows queue (ops)', { level: 'error' });
    emitter.emit('error', new Error('connect ECONNREFUSED 127.0.0.1:6379'));
    const [raw] = logs.raw();
    expect(duplicateKeys(raw)).toEqual([]);
    expect(JSON.parse(raw)).toMatchObject({ level: 50, component: 'ops', source: 'flows queue (ops)', msg: 'redis connection error' });
  });

  it('without a logger drops the events: an emitter with no listener would throw, and BullMQ would print each to stderr', () => {
    const emitter = new EventEmitter();
    expect(() => emitter.emit('error', new Error('no listener'))).toThrow('no listener');
    logConnectionErrors(emitter, undefined, 'agent queue (direct producer)');
    expect(() => emitter.emit('error', new Error('connect ECONNREFUSED 127.0.0.1:6379'))).not.toThrow();
  });

  it('is given every BullMQ Queue, Worker, QueueEvents and FlowProducer made in src/', () => {
    // A Queue re-emits its connection's errors: one made without a listener had BullMQ console.error each, a raw
    // stack trace per reconnect attempt (the flows worker's agent queue, src/app/features/orchestration.ts).
    const files: string[] = [];
    const walk = (dir: string) => {
      for (const e of readdirSync(dir, { withFileTypes: true })) {
        if (e.isDirectory()) walk(join(dir, e.name));
        else if (e.name.endsWith('.ts')) files.push(join(dir, e.name));
      }
    };
    walk(SRC);
    const made: Record<string, number> = {};
    const logged: Record<string, number> = {};
    for (const file of files) {
      const name = relative(SRC, file);
      // The agent queue's factory is counted where it is called.
      if (name === join('shared', 'queue', 'agent-queue.ts')) continue;
      const text = readFileSync(file, 'utf8');
      const n = text.match(/\bnew (Queue|Worker|QueueEvents|FlowProducer)\b(<[^(]*>)?\(|\bcreateAgentQueue\(\{/g)?.length ?? 0;
      if (!n) continue;
      made[name] = n;
      logged[name] = text.match(/\blogConnectionErrors\(/g)?.length ?? 0;
    }
    expect(Object.keys(made).length).toBeGreaterThanOrEqual(10);
    expect(logged).toEqual(made);
  });
});
