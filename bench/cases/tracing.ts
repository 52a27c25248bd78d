import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { startTracing } from '../../src/app/tracing.js';
import { createLogger } from '../../src/shared/core/logger.js';
import { injectTrace, inSpan, guardEvent, SpanKind } from '../../src/shared/telemetry/tracing.js';
import type { BenchContext } from '../lib/context.js';
import { round } from '../lib/stats.js';

/** Rounds alternate off/on/on/off, so the mean of each side sees the same drift. */
const mean = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / xs.length;
import { measurePath, type Path } from './throughput.js';

/**
 * An OTLP/HTTP receiver on loopback that only counts: spans (`"spanId"` keys; parents are `"parentSpanId"`)
 * and attempt spans (`"name":"process `), so receiving costs the measured process as little as it can.
 */
async function countingReceiver() {
  let spans = 0;
  let attempts = 0;
  const count = (body: string, needle: string) => {
    let n = 0;
    for (let i = body.indexOf(needle); i >= 0; i = body.indexOf(needle, i + needle.length)) n++;
    return n;
  };
  const server = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      const body = Buffer.concat(chunks).toString('utf8');
      spans += count(body, '"spanId"');
      attempts += count(body, '"name":"process ');
      res.writeHead(200, { 'content-type': 'application/json' }).end('{}');
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    endpoint: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    counts: () => ({ spans, attempts }),
    reset: () => ((spans = 0), (attempts = 0)),
    close: () => new Promise<void>((resolve) => server.close(() => resolve())),
  };
}

/**
 * What agentq's instrumentation does per job with tracing unset (no SDK: the API's no-op tracer): the
 * enqueue, attempt and model-call spans, the context injection and the guard events of a miss.
 */
async function noopCostNs(iterations: number): Promise<number> {
  const once = () =>
    inSpan('send agent-jobs', { kind: SpanKind.PRODUCER, attributes: { 'agentq.org_id': 'o', 'messaging.batch.message_count': 1 } }, async () => {
      injectTrace();
      await inSpan('process A:a', { kind: SpanKind.CONSUMER, attributes: { 'agentq.job.id': 'j', 'agentq.attempt': 1 } }, async (span) => {
        for (const name of ['fair_gate', 'result_cache', 'quota', 'rate_limit', 'breaker']) guardEvent(span, name, { d: 'x' });
        await inSpan('generate_content m', { kind: SpanKind.CLIENT, attributes: { 'gen_ai.request.model': 'm' } }, async (call) => {
          if (call.isRecording()) call.setAttributes({ 'gen_ai.usage.input_tokens': 1 });
        });
      });
    });
  for (let i = 0; i < 2000; i++) await once();
  // CPU time, not wall time: on a loaded machine the wall clock mostly measures the other processes.
  const t0 = process.cpuUsage();
  for (let i = 0; i < iterations; i++) await once();
  const used = process.cpuUsage(t0);
  return ((used.user + used.system) * 1000) / iterations;
}

/**
 * Tracing overhead: case 1's agentq miss and hit paths (one process, c=50, jobs enqueued with the producer)
 * with tracing unset vs exporting every span over OTLP/HTTP to a loopback receiver; rounds alternate
 * off/on/on/off (means) so machine noise hits both alike. Spans per job are counted at the receiver.
 */
export async function tracingCase(ctx: BenchContext): Promise<void> {
  const receiver = await countingReceiver();
  const logger = createLogger({ level: 'silent' });
  const ns = await noopCostNs(20_000);
  const results: Record<string, number[]> = {};
  const spansPerJob: Record<string, number[]> = {};
  try {
    for (const path of ['agentq-miss', 'agentq-hit'] as Path[]) {
      const expected = path === 'agentq-hit' ? 800 : 250;
      for (const on of [false, true, true, false]) {
        receiver.reset();
        const tracing = on ? startTracing(ctx.b.config({ OTEL_EXPORTER_OTLP_ENDPOINT: receiver.endpoint }), logger) : undefined;
        try {
          const r = await measurePath(ctx, path, 50, expected, { quiet: true });
          (results[`${path}:${on ? 'on' : 'off'}`] ??= []).push(r.jobsPerS);
          ctx.log(`  ${path} tracing ${on ? 'on ' : 'off'}: ${r.jobsPerS} jobs/s`);
        } finally {
          await tracing?.shutdown();
        }
        if (on) {
          const { spans, attempts } = receiver.counts();
          // Jobs were enqueued 1000 to a bulk call here, so this is attempt + model call (+ a share of one enqueue span).
          (spansPerJob[path] ??= []).push(round(spans / Math.max(1, attempts), 3));
        }
      }
    }
  } finally {
    await receiver.close();
  }
  ctx.details.tracing = { jobsPerS: results, spansPerJob, noopNsPerJob: round(ns, 0) };
  const tc = '10 tracing overhead (c=50, in-process receiver)';
  for (const path of ['agentq-miss', 'agentq-hit']) {
    const off = round(mean(results[`${path}:off`]), 1);
    const on = round(mean(results[`${path}:on`]), 1);
    ctx.add({ case: tc, name: `${path}, tracing unset`, value: off, unit: 'jobs/s' });
    ctx.add({ case: tc, name: `${path}, tracing on (OTLP/HTTP)`, value: on, unit: 'jobs/s', note: `spans exported per job: ${spansPerJob[path].join(', ')} (rounds)` });
    ctx.add({ case: tc, name: `${path}, throughput lost with tracing on`, value: round((1 - on / off) * 100, 1), unit: '%' });
    const perJobNs = 1e9 / off;
    ctx.add({
      case: tc,
      name: `${path}, no-op instrumentation with tracing unset`,
      value: round((ns / perJobNs) * 100, 3),
      unit: '% of a job',
      target: '<= 2',
      met: ns / perJobNs <= 0.02,
      note: `${round(ns / 1000, 2)} µs CPU per job (3 no-op spans, 5 events, 1 inject) vs ${round(perJobNs / 1000, 0)} µs per job at this rate`,
    });
  }
}
