import type { RedisClient } from '../infra/redis/connection.js';
import type { Logger } from '../core/logger.js';
import { encodeEvent, isTerminal, type StreamEvent } from '../core/stream-event.js';

export interface StreamWriterOptions {
  redis: RedisClient;
  /** Approximate cap on entries (XADD MAXLEN ~): bounds memory; a late reader of a longer answer misses its start. */
  maxLen: number;
  /** Expiry set when the stream is first written, so a job whose worker dies cannot leave it forever. */
  runningTtlS: number;
  /** Expiry once the final result or error is written. */
  endTtlS: number;
  logger: Logger;
}

/** Merges consecutive text events: a backlog goes out as one entry instead of one XADD per model chunk. */
function coalesce(events: StreamEvent[]): StreamEvent[] {
  const out: StreamEvent[] = [];
  for (const e of events) {
    const prev = out[out.length - 1];
    if (e.kind === 'text' && prev?.kind === 'text') out[out.length - 1] = { kind: 'text', text: prev.text + e.text };
    else out.push(e);
  }
  return out;
}

/**
 * Appends one job's events to its Redis Stream, in order. `push` never waits (the model is not slowed by
 * Redis round trips): at most one pipeline is in flight, and whatever arrives meanwhile goes in the next one.
 */
export class JobStreamWriter {
  private pending: StreamEvent[] = [];
  private flushing: Promise<void> | undefined;
  private expirySet = false;

  constructor(
    readonly key: string,
    private readonly o: StreamWriterOptions,
    /** The job's `timestamp`: tags every entry with the incarnation of the job id that wrote it (stream-event.ts). */
    readonly incarnation?: number,
  ) {}

  push(e: StreamEvent): void {
    this.pending.push(e);
    this.flushing ??= this.flush();
  }

  /** Resolves once everything pushed so far is in Redis (or was given up on). */
  drain(): Promise<void> {
    return this.flushing ?? Promise.resolve();
  }

  private async flush(): Promise<void> {
    try {
      while (this.pending.length > 0) {
        const batch = coalesce(this.pending.splice(0));
        const pipeline = this.o.redis.pipeline();
        for (const e of batch) pipeline.xadd(this.key, 'MAXLEN', '~', this.o.maxLen, '*', ...encodeEvent(e, this.incarnation));
        if (batch.some(isTerminal)) pipeline.expire(this.key, this.o.endTtlS);
        else if (!this.expirySet) pipeline.expire(this.key, this.o.runningTtlS);
        this.expirySet = true;
        const results = (await pipeline.exec()) ?? [];
        const failed = results.find(([err]) => err);
        if (failed) throw failed[0];
      }
    } catch (err) {
      // Readers notice a job that ended without a final entry and answer from the job itself.
      this.pending = [];
      this.o.logger.warn({ key: this.key, err: err instanceof Error ? err.message : String(err) }, 'could not write to job stream');
    } finally {
      this.flushing = undefined;
    }
  }
}
