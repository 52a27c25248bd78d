import { randomUUID } from 'node:crypto';
import { Writable } from 'node:stream';
import { UnrecoverableError, Worker, type Job } from 'bullmq';
import type { RedisClient } from '../../src/shared/infra/redis/connection.js';
import { expect, vi } from 'vitest';
import { createLogger, type Logger } from '../../src/shared/core/logger.js';
import type { AgentQueue } from '../../src/shared/queue/agent-queue.js';
import { QUEUE } from '../../src/shared/core/queue-names.js';
import type { AgentJobData, AgentResult } from '../../src/shared/core/types.js';
import { POLL } from './wait.js';

export interface CapturedLogs {
  logger: Logger;
  /** Every line written so far, raw (to look for secrets) and parsed. */
  raw(): string[];
  lines(): Array<Record<string, any>>;
}

/** A real pino logger (with the product's redaction) writing into memory. */
export function captureLogs(level = 'info'): CapturedLogs {
  const raw: string[] = [];
  const stream = new Writable({
    write(chunk, _enc, done) {
      raw.push(...String(chunk).split('\n').filter(Boolean));
      done();
    },
  });
  return {
    logger: createLogger({ level, destination: stream }),
    raw: () => [...raw],
    lines: () => raw.map((l) => JSON.parse(l) as Record<string, any>),
  };
}

/** A RiskAnalyzer request whose prompt contains `marker`, so an emulator fault can target just this job. */
export function riskJob(marker: string, extra: Record<string, unknown> = {}) {
  return {
    agent: 'RiskAnalyzer',
    action: 'analyze_risks',
    input: { startup: { name: `Acme ${marker}`, industry: 'robotics', stage: 'seed', description: `Warehouse robots, batch ${marker}`, ...extra } },
  };
}

/** The message of the worker's dead-letter log line (src/workers/ops/worker-listeners.ts). */
export const DEAD_LETTERED = 'job dead-lettered';

export const marker = () => `m${randomUUID().slice(0, 12)}`;

export interface FailSpec {
  data: Partial<AgentJobData> & { orgId: string };
  reason: string;
  unrecoverable?: boolean;
  /** BullMQ priority (1 is the highest): the job waits in the priority set, not the wait list. */
  priority?: number;
}

/**
 * Puts jobs straight into the failed set without running a model: adds them with one attempt and fails
 * each through a manual BullMQ worker (no processor). Returns the jobs in the order given.
 */
export async function failJobs(queue: AgentQueue, connection: RedisClient, prefix: string, specs: FailSpec[]): Promise<Array<Job<AgentJobData, AgentResult>>> {
  const added = await queue.addBulk(
    specs.map((s) => ({
      name: 'RiskAnalyzer:analyze_risks',
      data: { agent: 'RiskAnalyzer', action: 'analyze_risks', input: { startup: { name: 'Acme' } }, enqueuedAt: Date.now(), ...s.data } as AgentJobData,
      opts: { attempts: 1, jobId: randomUUID(), ...(s.priority ? { priority: s.priority } : {}) },
    })),
  );
  const byId = new Map(added.map((j, i) => [j.id!, specs[i]]));
  const worker = new Worker<AgentJobData, AgentResult>(QUEUE.agent, null, { connection, prefix, autorun: false });
  try {
    const token = randomUUID();
    for (let n = 0; n < specs.length; n++) {
      const job = await worker.getNextJob(token, { block: false });
      if (!job) throw new Error('expected a waiting job');
      const spec = byId.get(job.id!);
      if (!spec) throw new Error(`unexpected job ${job.id} in the queue`);
      await job.moveToFailed(spec.unrecoverable ? new UnrecoverableError(spec.reason) : new Error(spec.reason), token);
      // Distinct failure times, so "oldest first" has one answer: the next fails once the clock has moved on.
      const failedAt = job.finishedOn ?? Date.now();
      await vi.waitFor(() => expect(Date.now()).toBeGreaterThan(failedAt), { ...POLL, interval: 1 });
    }
  } finally {
    await worker.close();
  }
  return Promise.all(added.map(async (j) => (await queue.getJob(j.id!))!));
}

/** Takes every waiting job (as a worker would) and fails it again; returns how many. */
export async function failWaiting(connection: RedisClient, prefix: string, reason: string): Promise<number> {
  const worker = new Worker<AgentJobData, AgentResult>(QUEUE.agent, null, { connection, prefix, autorun: false });
  let n = 0;
  try {
    const token = randomUUID();
    for (;;) {
      const job = await worker.getNextJob(token, { block: false });
      if (!job) return n;
      await job.moveToFailed(new Error(reason), token);
      n++;
    }
  } finally {
    await worker.close();
  }
}

export interface Sample {
  name: string;
  labels: Record<string, string>;
  value: number;
}

// Values are what Go's ParseFloat reads (the exposition format says so): NaN and Inf in any case. prom-client
// writes a NaN (the event loop lag mean of a collect that saw no sample) as "Nan".
const SAMPLE = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (-?(?:[0-9.e+-]+)|[nN][aA][nN]|[+-]?[iI][nN][fF])$/;
const LABEL = /([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"(?:,|$)/g;

/** Parses Prometheus text exposition strictly: any line that is not a comment or a sample throws. */
export function parseProm(text: string): Sample[] {
  const out: Sample[] = [];
  for (const line of text.split('\n')) {
    if (!line || line.startsWith('# HELP ') || line.startsWith('# TYPE ')) continue;
    const m = SAMPLE.exec(line);
    if (!m) throw new Error(`not a Prometheus sample line: ${line}`);
    const labels: Record<string, string> = {};
    if (m[2]) {
      let consumed = 0;
      for (const l of m[2].matchAll(LABEL)) {
        labels[l[1]] = l[2];
        consumed += l[0].length;
      }
      if (consumed !== m[2].length) throw new Error(`bad labels in: ${line}`);
    }
    const special = m[3].toLowerCase();
    const value = special === 'nan' ? NaN : special.endsWith('inf') ? (special.startsWith('-') ? -Infinity : Infinity) : Number(m[3]);
    if (Number.isNaN(value) && special !== 'nan') throw new Error(`bad value in: ${line}`);
    out.push({ name: m[1], labels, value });
  }
  return out;
}

/** Sum of the samples named `name` whose labels include `labels`. */
export function sampleSum(samples: Sample[], name: string, labels: Record<string, string> = {}): number {
  return samples.filter((s) => s.name === name && Object.entries(labels).every(([k, v]) => s.labels[k] === v)).reduce((n, s) => n + s.value, 0);
}
