import { ReplyError } from 'ioredis';
import type { Redis } from 'ioredis';
import { connectionTo, nodeServing, type RedisClient } from '../infra/redis/connection.js';
import type { Logger } from '../core/logger.js';
import { AgentqError } from '../core/errors.js';
import { compareStreamIds, isStreamId } from '../core/stream-event.js';

/** Redis refuses to read a subscriber's stream (an id out of range, a key that is not a stream). */
export class StreamUnreadableError extends AgentqError {
  constructor(
    readonly key: string,
    reason: string,
  ) {
    super(`stream ${key} cannot be read: ${reason}`, 'ESTREAMUNREADABLE');
  }
}

export type RawEntry = [id: string, fields: string[]];

/** Redis error codes (a reply's first word) of a server that cannot serve now, whatever the key. */
const SERVER_STATE = /^(LOADING|BUSY|MASTERDOWN|CLUSTERDOWN|TRYAGAIN|READONLY|NOREPLICAS|MOVED|ASK)\b/;

export interface StreamSubscription {
  /** Stops reading for this subscriber (e.g. while its socket is full) without losing its position. */
  pause(): void;
  resume(): void;
  close(): void;
}

interface Sub {
  key: string;
  /** Last entry id delivered. */
  last: string;
  active: boolean;
  onEntries: (entries: RawEntry[]) => void;
  /** The reader dropped this subscriber: Redis refuses to read its stream. */
  onError: (err: StreamUnreadableError) => void;
}

export interface StreamReaderOptions {
  /** Opens the reader's own connection (blocking commands need one; it must wait out outages). */
  connect: () => RedisClient;
  /** Any other connection: it sends CLIENT UNBLOCK to wake the reader when the set of streams changes. */
  control: RedisClient;
  /** Upper bound of one XREAD BLOCK; normally the reader is woken long before. */
  blockMs: number;
  /** Most entries read per stream per call. */
  count: number;
  logger: Logger;
}

/**
 * One blocking XREAD per process for every open SSE stream: subscribers of the same job share a cursor (the
 * lowest position among them) and each gets only the entries past its own, so a late joiner simply lowers
 * the cursor for one read. Adding a stream wakes the blocked read with CLIENT UNBLOCK.
 */
export function createStreamReader(o: StreamReaderOptions) {
  const byKey = new Map<string, Set<Sub>>();
  let conn: RedisClient | undefined;
  /**
   * The reader's connection that carries the XREAD (on a cluster, the one to the primary serving the shard's slot)
   * and its client id there, which CLIENT UNBLOCK names on that same node.
   */
  let blocking: { node: Redis; id: number } | undefined;
  /** Nodes whose 'close' (a reconnect is a new client id) already forgets `blocking`. */
  const watched = new WeakSet<Redis>();
  let loop: Promise<void> | undefined;
  let closed = false;
  /** Bumped whenever the set of streams to read grows; the read in flight knows which generation it serves. */
  let generation = 0;
  /** Generation of the read being prepared or in flight; undefined between reads. */
  let reading: number | undefined;
  let idle: (() => void) | undefined;

  function cursors(): { keys: string[]; ids: string[] } {
    const keys: string[] = [];
    const ids: string[] = [];
    for (const [key, subs] of byKey) {
      let min: string | undefined;
      for (const s of subs) if (s.active && (min === undefined || compareStreamIds(s.last, min) < 0)) min = s.last;
      if (min !== undefined) {
        keys.push(key);
        ids.push(min);
      }
    }
    return { keys, ids };
  }

  /**
   * `from`: the id each stream was read from. A read holds only the entries past it, so a subscriber further back
   * (one that joined, or resumed, while the read was in flight and its wake-up did not cut it short) gets none of
   * them: delivering them would move its position past the entries between, never to be read. The next read starts
   * from its position and serves it.
   */
  function dispatch(reply: Array<[string, RawEntry[]]>, from: Map<string, string>): void {
    for (const [key, entries] of reply) {
      const start = from.get(key);
      for (const sub of [...(byKey.get(key) ?? [])]) {
        if (!sub.active || start === undefined || compareStreamIds(sub.last, start) < 0) continue;
        const fresh = entries.filter(([id]) => compareStreamIds(id, sub.last) > 0);
        if (fresh.length === 0) continue;
        sub.last = fresh[fresh.length - 1][0];
        try {
          sub.onEntries(fresh);
        } catch (err) {
          o.logger.error({ err }, 'stream subscriber failed');
        }
      }
    }
  }

  /**
   * The one XREAD names every subscriber's stream, so Redis refusing one of them refuses the read for all.
   * After a reply error, each stream is read alone (one pipeline, without blocking) and the subscribers of the
   * streams Redis refuses for the key's own sake are dropped with an error. A refusal whose Redis error code
   * says the server cannot serve now (loading, a busy script, a cluster changing hands) drops nobody: the read
   * is retried as before. Returns whether a subscriber was dropped.
   */
  async function dropUnreadable(c: RedisClient, keys: string[], ids: string[]): Promise<boolean> {
    const pipeline = c.pipeline();
    keys.forEach((key, i) => pipeline.xread('COUNT', 1, 'STREAMS', key, ids[i]));
    const results = (await pipeline.exec()) ?? [];
    const refused = keys
      .map((key, i) => ({ key, err: results[i]?.[0] }))
      .filter((r) => r.err instanceof ReplyError && !SERVER_STATE.test((r.err as Error).message));
    if (refused.length === 0) return false;
    for (const { key, err } of refused) {
      const subs = byKey.get(key);
      byKey.delete(key);
      o.logger.warn({ key, err: (err as Error).message, subscribers: subs?.size ?? 0 }, 'stream reader dropped the subscribers of a stream Redis refuses to read');
      for (const sub of subs ?? []) fail(sub, new StreamUnreadableError(key, (err as Error).message));
    }
    return true;
  }

  function fail(sub: Sub, err: StreamUnreadableError): void {
    sub.active = false;
    try {
      sub.onError(err);
    } catch (e) {
      o.logger.error({ err: e }, 'stream subscriber failed');
    }
  }

  async function run(c: RedisClient): Promise<void> {
    while (!closed) {
      reading = generation;
      const { keys, ids } = cursors();
      if (keys.length === 0) {
        reading = undefined;
        await new Promise<void>((resolve) => (idle = resolve));
        idle = undefined;
        continue;
      }
      try {
        await locate(c, keys[0]);
        const reply = (await c.xread('COUNT', o.count, 'BLOCK', o.blockMs, 'STREAMS', ...keys, ...ids)) as Array<[string, RawEntry[]]> | null;
        reading = undefined;
        if (reply) dispatch(reply, new Map(keys.map((k, i) => [k, ids[i]])));
      } catch (err) {
        reading = undefined;
        if (closed) return;
        if (err instanceof ReplyError && (await dropUnreadable(c, keys, ids).catch(() => false))) continue;
        o.logger.warn({ err: err instanceof Error ? err.message : String(err) }, 'stream reader read failed; retrying');
        await new Promise((r) => setTimeout(r, 200));
      }
    }
  }

  /**
   * Finds the connection the XREAD of `key` goes out on, and its client id. CLIENT ID names no key: a cluster
   * client would send it to a random primary, and the id of the reader's connection to another node is no use
   * (or worse, names another client on the node UNBLOCK then reaches). Every stream of a reader shares one slot.
   */
  async function locate(c: RedisClient, key: string): Promise<void> {
    let node = nodeServing(c, key);
    if (!node) {
      // A cluster client without its slot map yet: a command on the key waits for it.
      await c.exists(key);
      node = nodeServing(c, key);
    }
    if (!node) return void (blocking = undefined);
    if (blocking?.node === node) return;
    if (!watched.has(node)) {
      watched.add(node);
      node.on('close', () => {
        if (blocking?.node === node) blocking = undefined;
      });
    }
    blocking = { node, id: (await node.client('ID')) as number };
  }

  /** Cuts the blocked read short so the next one includes the new stream. */
  async function wake(): Promise<void> {
    generation++;
    if (idle) return idle();
    const want = generation;
    // The read may not have reached Redis yet (UNBLOCK then finds nothing blocked): retry briefly.
    for (let i = 0; i < 50 && !closed && reading !== undefined && reading < want; i++) {
      // On the node the read blocks on: a cluster client would send UNBLOCK to a random primary.
      const target = blocking && connectionTo(o.control, blocking.node);
      if (blocking && target && (await target.client('UNBLOCK', blocking.id).catch(() => 0)) === 1) return;
      await new Promise((r) => setTimeout(r, 2));
    }
  }

  function start(): void {
    if (conn) return;
    const c = o.connect();
    conn = c;
    loop = run(c);
  }

  return {
    /** `onError`: the subscriber was dropped (Redis refuses to read its stream); it gets nothing more. */
    subscribe(key: string, fromId: string, onEntries: (entries: RawEntry[]) => void, onError: (err: StreamUnreadableError) => void): StreamSubscription {
      if (closed) throw new Error('stream reader is closed');
      // Checked here, not left to Redis: one such id in the shared read would refuse it for every subscriber.
      if (!isStreamId(fromId)) throw new StreamUnreadableError(key, `invalid stream id ${JSON.stringify(fromId)}`);
      start();
      const sub: Sub = { key, last: fromId, active: true, onEntries, onError };
      let subs = byKey.get(key);
      if (!subs) byKey.set(key, (subs = new Set()));
      subs.add(sub);
      void wake();
      const detach = () => {
        subs.delete(sub);
        if (subs.size === 0 && byKey.get(key) === subs) byKey.delete(key);
      };
      return {
        pause: () => void (sub.active = false),
        resume: () => {
          if (sub.active || !subs.has(sub)) return;
          sub.active = true;
          void wake();
        },
        // A read in flight that still names this stream costs nothing: its entries find no subscriber.
        close: () => {
          sub.active = false;
          detach();
        },
      };
    },

    /** Open subscriptions (for metrics and tests). */
    size(): number {
      let n = 0;
      for (const subs of byKey.values()) n += subs.size;
      return n;
    },

    async close(): Promise<void> {
      closed = true;
      byKey.clear();
      idle?.();
      conn?.disconnect();
      await loop;
    },
  };
}

export type StreamReader = ReturnType<typeof createStreamReader>;
