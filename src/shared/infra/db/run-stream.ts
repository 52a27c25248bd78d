import type { RedisClient } from '../redis/connection.js';
import { defineLua } from '../lua.js';
import { closesOf } from '../redis/connection-closes.js';
import type { AgentRun } from './agent-runs.js';
import { billedRowField, childBilledField, childEmbeddingTokensField, childEmbeddingUsdField, childRunsField, JOB_BILLED_FIELD } from '../../core/queue-keys.js';

/** The one field of a usage stream entry: the whole row as JSON, so a new `agent_runs` column needs no change here. */
export const RUN_FIELD = 'r';

/**
 * What an optional field of a row stores when its key is absent from the row's JSON (`ENCODED_ROWS_INSERT`'s
 * COALESCEs and NULLs, `record`'s `??`), so `encodeRun` leaves a field holding it out: most of an attempt's row is
 * such fields (no error, no request id, the standard tier, no part, no cached or thinking tokens, no embedding call),
 * and each byte of the row is paid for in the worker's call to Redis, the stream, the sink's read and Postgres's JSON
 * parse. `standardCostUsd` is also left out when it equals `costUsd` (the INSERT's default). The fields `AgentRun`
 * requires are always written: a reader takes them as they are (a sink of a release that decoded the rows rounded
 * the counts, and refused a row without them).
 */
const STORED_WHEN_ABSENT: ReadonlyMap<string, unknown> = new Map<string, unknown>([
  ['jobTs', 0],
  ['part', ''],
  ['cacheHit', null],
  ['error', null],
  ['requestId', null],
  ['tier', 'standard'],
  ['cachedTokens', 0],
  ['thoughtsTokens', 0],
  ['standardCostUsd', null],
  ['embeddingTokens', 0],
  ['embeddingCostUsd', 0],
  ['embeddingEstimated', false],
  ['embeddingModel', null],
]);

/** A key as JSON: the row's keys are identifiers, quoted once each rather than by JSON.stringify per row. */
const quotedKeys = new Map<string, string>();
const quotedKey = (k: string): string => {
  let q = quotedKeys.get(k);
  if (q === undefined) quotedKeys.set(k, (q = JSON.stringify(k)));
  return q;
};

/**
 * The row as JSON, `createdAt` an ISO string (a Date serialises as one), without the fields that hold what their
 * column stores when absent (`STORED_WHEN_ABSENT`): an attempt's row is ~25% shorter, and the sink's INSERT costs
 * PGlite ~3 us (of ~28) less a row. Written field by field as JSON.stringify writes each value (no copy of the row
 * without those fields: the ~20-field spread cost several times the stringify itself; a replacer function made
 * JSON.stringify twice as slow). `createdAt` is stamped with the attempt's end time when unset: the row's
 * `created_at` must not move to whenever the sink commits it.
 */
export function encodeRun(run: AgentRun): string {
  const row = run as unknown as Record<string, unknown>;
  let json = '{';
  for (const k in row) {
    const v = row[k];
    if (v === undefined || (k === 'createdAt' && !v)) continue;
    if (STORED_WHEN_ABSENT.get(k) === v || (k === 'standardCostUsd' && v === run.costUsd)) continue;
    let value: string | undefined;
    if (typeof v === 'number') value = Number.isFinite(v) ? String(v) : 'null';
    else if (typeof v === 'function' || typeof v === 'symbol') continue;
    else value = JSON.stringify(v);
    if (value === undefined) continue;
    json += `${json.length > 1 ? ',' : ''}${quotedKey(k)}:${value}`;
  }
  if (!run.createdAt) json += `${json.length > 1 ? ',' : ''}"createdAt":"${new Date().toISOString()}"`;
  return `${json}}`;
}

/**
 * The row JSON.parse made, its `createdAt` turned into a Date in place: the parsed object is this call's own, and a
 * spread copy of its ~20 fields was most of what decoding a row allocated (the sink decodes every job's row). The
 * optional fields `encodeRun` left out stay absent, which every reader takes as the value left out (`?? null`,
 * `?? 0`, `?? 'standard'`, `?? costUsd`, as the INSERT does).
 */
export function decodeRun(json: string): AgentRun {
  const raw = JSON.parse(json) as Omit<AgentRun, 'createdAt'> & { createdAt?: string | Date };
  raw.createdAt = raw.createdAt ? new Date(raw.createdAt) : undefined;
  return raw as AgentRun;
}

/** What a run sink asks of one call that appends to its stream (lua/includes/usage-ride.lua). */
export interface UsageRide {
  /** The ride's script arguments: group, consumer ('' = no read), count, ids to acknowledge. */
  args: Array<string | number>;
}

/**
 * A run sink's offer to let the worker's appends carry its own call: under load the sink then makes no round
 * trip of its own. Every ride taken must be handed back with `done`, with the script's reply or, when the
 * call failed, nothing.
 */
export interface UsageRider {
  /** The stream the sink reads: a ride only goes with an append to that stream. */
  key: string;
  take(): UsageRide | undefined;
  done(ride: UsageRide, reply: unknown): void;
}

/** The BullMQ hash of the job a row bills (`jobHashKey`) and its parent's (`job.parentKey`): see `createRunAppender`'s `record`. */
export interface RunBillTo {
  key: string;
  jobId: string;
  parentKey: string;
}

/** A row's bill as a script that appends the row takes it (lua/includes/usage-bill.lua): its two keys and its arguments. */
export interface UsageBill {
  keys: [job: string, parent: string];
  args: string[];
}

/**
 * What `run` adds to its job's and its parent's hashes: a row its result will not carry (failed, delayed) its cost,
 * on the job's `JOB_BILLED_FIELD` and the parent's `childBilledField`; a completed row its cost on the parent's
 * `childRunsField` (the accepted run's result carries one such row, a run whose completion BullMQ refused none, and a
 * stored batch answer's row, part '' whichever run reads it, is one row); any row its embedding calls, on the parent's embedding fields for the child (a completed
 * child's result has no embedding figures of its own). Once per row (`billedRowField`): a call ioredis sends again
 * after a lost reply adds nothing.
 */
export function usageBillOf(run: AgentRun, to: RunBillTo): UsageBill {
  const completed = run.state === 'completed';
  return {
    keys: [to.key, to.parentKey],
    args: [
      String(run.jobTs ?? 0),
      completed ? '' : JOB_BILLED_FIELD,
      String(run.costUsd),
      completed ? childRunsField(to.jobId) : childBilledField(to.jobId),
      childEmbeddingTokensField(to.jobId),
      String(run.embeddingTokens ?? 0),
      childEmbeddingUsdField(to.jobId),
      String(run.embeddingCostUsd ?? 0),
      billedRowField(run.attempt, run.part ?? ''),
    ],
  };
}

/**
 * The worker's side of write-behind usage: an attempt's row is appended to a Redis Stream (one call) before
 * the attempt returns, so by the time BullMQ records the job as finished its row is durable in Redis; the run
 * sink (run-sink.ts) moves it to Postgres, and its acknowledgements and reads ride on these appends. `redis`
 * should be a worker connection (waits out an outage rather than failing the append).
 */
export function createRunAppender({ redis, key, rider }: { redis: RedisClient; key: string; rider?: UsageRider }) {
  const appendLua = defineLua(redis, 'usage-append-1.lua');
  const billLua = defineLua(redis, 'usage-bill-3.lua');
  const ridden = rider?.key === key ? rider : undefined;
  const closes = closesOf(redis);
  return {
    /**
     * `billTo`: a flow child's row, also summed on the job's hash and its parent's in the same call, for the parent's
     * sums (`usageBillOf`: what its result will not carry, and its embedding calls).
     */
    async record(run: AgentRun, billTo?: RunBillTo): Promise<void> {
      const json = encodeRun(run);
      const ride = ridden?.take();
      if (!ride && !billTo) {
        await redis.xadd(key, '*', RUN_FIELD, json);
        return;
      }
      let reply: unknown;
      const seen = closes();
      try {
        reply = billTo
          ? await billLua([key, billTo.key, billTo.parentKey], [RUN_FIELD, json, ...usageBillOf(run, billTo).args, ...(ride?.args ?? ['', '', 0])])
          : await appendLua([key], [RUN_FIELD, json, ...ride!.args]);
      } finally {
        // Across a reconnect the reply may be a re-sent call's: what the first one read is unknown (lost).
        if (ride) ridden!.done(ride, closes() === seen ? reply : undefined);
      }
    },
    /** For a script that appends the row to `key` in a round trip it makes anyway (the result cache's store, the fair claim). */
    entry: { key, field: RUN_FIELD, encode: encodeRun, ...(ridden ? { rider: ridden } : {}) },
  };
}

export type RunAppender = ReturnType<typeof createRunAppender>;
