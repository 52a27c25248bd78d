import { whileReachable, type RedisClient } from '../redis/connection.js';
import type { Logger } from '../../core/logger.js';
import { defineLua } from '../lua.js';
import { closesOf } from '../redis/connection-closes.js';
import type { AgentRun } from './agent-runs.js';
import { decodeRun, RUN_FIELD, type UsageRide, type UsageRider } from './run-stream.js';
import { refusedForContent } from './pg-content.js';

type Entry = [id: string, fields: string[] | null];

/** Where a sink may be stopped by a fault test: after reading a batch, and after committing it but before the XACK. */
export type SinkPoint = 'read' | 'committed';

export interface RunSinkOptions {
  /** A connection of its own: the sink blocks on it (XREADGROUP BLOCK). */
  redis: RedisClient;
  key: string;
  group: string;
  /** Unique per process: a restarted process is a new consumer, and takes the old one's entries by XAUTOCLAIM. */
  consumer: string;
  /** Takes the rows as the stream holds them (JSON, `encodeRun`'s): the sink decodes only a row Postgres refuses. */
  store: { recordEncoded(rows: string[]): Promise<number> };
  /** Entries a consumer has read but not acknowledged for this long are taken over (its process died). */
  claimIdleMs: number;
  batch?: number;
  blockMs?: number;
  /** Pause between two tries while Postgres refuses the batch (doubles up to `retryMaxMs`). */
  retryBaseMs?: number;
  retryMaxMs?: number;
  /**
   * After a batch that was not full, the next read waits until this long after the previous one: at low
   * rates rows gather into batches instead of costing a read, an INSERT and an ack each. Bounds the lag it adds.
   */
  gatherMs?: number;
  /**
   * After a batch of `busyRows` rows or more (rows keep coming), the next read waits until this long after the
   * previous one instead of `gatherMs`: each INSERT costs Postgres and this process a few ms whatever its size
   * (PGlite ~2-5 ms, a woken process's caches cold), more than its rows do, so fewer, larger batches cost about
   * half as much CPU per row. Bounds the lag it adds under load (well within the 1 s quotas and /v1/usage allow).
   */
  busyGatherMs?: number;
  busyRows?: number;
  /** Per committed row: ms from the XADD (entry id time) to the commit. */
  onCommitted?: (lagsMs: number[]) => void;
  /** Rows Postgres refused for what they hold (pg-content.ts `refusedForContent`): logged, counted here, then acknowledged. */
  onRefused?: (rows: AgentRun[]) => void;
  /**
   * Most rows the stream may hold before `onBacklog(true)` (0 or absent: no limit). The stream lives in a
   * `noeviction` Redis: rows piling up behind a Postgres that stays down would end in Redis refusing every
   * write, the queue's included. The process stops taking jobs instead (worker-service), so none is lost.
   */
  backlogMax?: number;
  /** The backlog crossed `backlogMax` (over), or fell back to 80 % of it (not over). */
  onBacklog?: (over: boolean, rows: number) => void;
  /**
   * Every length of the stream the sink sees (and, while rows are not written, an XLEN per retry), for a limit
   * judged over several streams (workers/usage-backlog.ts: the queue shards' streams together).
   */
  onLength?: (rows: number) => void;
  /** Fault tests only: runs at each point before the sink goes on. */
  at?: (point: SinkPoint) => void | Promise<void>;
  logger: Logger;
}

const idMs = (id: string) => Number(id.slice(0, id.indexOf('-')));

/** Longest the sink waits for a ride in flight before it reads on its own. */
const RIDE_WAIT_MS = 1000;

/**
 * Moves usage rows from the Redis Stream to `agent_runs` in batches (one multi-row INSERT per batch,
 * idempotent on (job_id, job_ts, attempt, part)), and acknowledges them (XACK + XDEL) only after the commit. So:
 * - a sink killed before its commit leaves the entries pending under its name: the next sink to look
 *   (XAUTOCLAIM after `claimIdleMs`) writes them;
 * - a sink killed between commit and XACK leaves committed entries pending: they are written again and the
 *   unique (job_id, job_ts, attempt, part) turns the second write into nothing (ON CONFLICT DO NOTHING);
 * - Postgres down: the batch stays pending and is retried with backoff; the stream absorbs what arrives.
 * Its acknowledgements and reads ride on the worker's appends to the same stream (`rider`): a process that
 * completes jobs runs its sink without a round trip of its own; an idle one blocks in XREADGROUP.
 */
export function createRunSink(opts: RunSinkOptions) {
  const { redis, key, group, consumer, store, logger } = opts;
  const batch = opts.batch ?? 500;
  // A row arriving ends the block at once, so the block only sets the idle poll rate. Takeovers are checked
  // between reads: the cap keeps them at least every `claimIdleMs / 2`.
  const blockMs = Math.max(1, Math.min(opts.blockMs ?? 1000, Math.floor(opts.claimIdleMs / 2)));
  const retryBaseMs = opts.retryBaseMs ?? 100;
  const retryMaxMs = opts.retryMaxMs ?? 2000;
  const gatherMs = opts.gatherMs ?? 100;
  const busyGatherMs = Math.max(gatherMs, opts.busyGatherMs ?? 300);
  const busyRows = opts.busyRows ?? 16;
  const ackLua = defineLua(redis, 'usage-ack-1.lua');
  let running = false;
  let loop: Promise<void> | undefined;
  let wake: (() => void) | undefined;
  let lastClaim = 0;
  const closes = closesOf(redis);
  /**
   * Where the next XAUTOCLAIM goes on: each call scans at most ten times its COUNT of pending entries, so one that
   * always started at `0-0` would never reach a dead consumer's entries behind the live sinks' own.
   */
  let claimCursor = '0-0';
  let blocked = false;
  /** Committed, not yet acknowledged: acknowledged by the next call that touches the stream (a ride or the sink's own). */
  let unacked: string[] = [];
  /** Entries read for this sink (by a ride or its own call) and not yet written. */
  let inbox: Entry[] = [];
  /**
   * The sink wants its next batch and offers the call to the next append: one ride per gather period, not
   * one per append (a read per append would cost Redis more than the sink's own call every 100 ms). Never
   * while it re-reads its own history after a failure, nor while it blocks in XREADGROUP (the append that
   * would carry the ride wakes that read anyway).
   */
  let wanting = false;
  /** Rides sent and not yet answered: the sink waits for them instead of reading on its own. */
  let riding = 0;
  let rideSettled: (() => void) | undefined;
  /** A ride that may have read entries failed: they are pending under this consumer, re-read from its history. */
  let lostRead = false;
  const backlogMax = opts.backlogMax ?? 0;
  let over = false;

  /** The stream's length as last seen: reported when it crosses the limit, and when it is back under 80 % of it. */
  function observe(rows: number): void {
    opts.onLength?.(rows);
    if (backlogMax <= 0) return;
    if (!over && rows > backlogMax) {
      over = true;
      opts.onBacklog?.(true, rows);
    } else if (over && rows <= Math.floor(backlogMax * 0.8)) {
      over = false;
      opts.onBacklog?.(false, rows);
    }
  }
  /** While rows are not written (Postgres down) no acknowledgement reports the length: asked for it then. */
  const lookAtBacklog = () => (backlogMax > 0 || opts.onLength ? redis.xlen(key).then(observe, () => {}) : undefined);

  /** The ids each ride handed out acknowledges: given back when its call failed. */
  const rideIds = new WeakMap<UsageRide, string[]>();
  const rider: UsageRider = {
    key,
    take() {
      if (!wanting || blocked || !running) return undefined;
      wanting = false;
      const ids = unacked;
      unacked = [];
      riding++;
      const ride: UsageRide = { args: [group, consumer, batch, ...ids] };
      rideIds.set(ride, ids);
      return ride;
    },
    done(ride, reply) {
      riding--;
      if (Array.isArray(reply)) {
        const [entries, rows] = reply as [Entry[], number];
        if (entries.length) inbox.push(...entries);
        observe(rows);
      } else {
        // The call failed, or may have run without its reply arriving: acknowledging again is harmless, and
        // what it may have read (every ride reads) is pending under this consumer.
        unacked.push(...(rideIds.get(ride) ?? []));
        lostRead = true;
      }
      rideSettled?.();
    },
  };

  async function ensureGroup(): Promise<void> {
    try {
      // From the start of the stream: rows appended before any sink existed are written too.
      await redis.xgroup('CREATE', key, group, '0', 'MKSTREAM');
    } catch (err) {
      if (!String((err as Error).message).includes('BUSYGROUP')) throw err;
    }
  }

  async function forgetConsumer(): Promise<void> {
    const pendingHere = (await redis.xpending(key, group, '-', '+', 1, consumer)) as unknown[];
    if (pendingHere.length === 0) await redis.xgroup('DELCONSUMER', key, group, consumer);
  }

  /** Own pending entries (`0`) after a failure or at start, else new ones (`>`, blocking). */
  async function read(pending: boolean): Promise<Entry[]> {
    const args = pending
      ? (['GROUP', group, consumer, 'COUNT', batch, 'STREAMS', key, '0'] as const)
      : (['GROUP', group, consumer, 'COUNT', batch, 'BLOCK', blockMs, 'STREAMS', key, '>'] as const);
    blocked = !pending;
    // A connection lost while the read waits for its reply: Redis may have delivered entries into this consumer's
    // history whose reply never arrived, and ioredis sends the read again after the reconnect, whose reply holds
    // only what came since. The history is read again after it (within one block, not after claimIdleMs).
    const seen = closes();
    try {
      const reply = (await (redis.xreadgroup as (...a: unknown[]) => Promise<unknown>)(...args)) as Array<[string, Entry[]]> | null;
      return reply?.[0]?.[1] ?? [];
    } finally {
      if (closes() !== seen) lostRead = true;
      blocked = false;
    }
  }

  /** Entries other consumers read and never acknowledged within `claimIdleMs`: their process is gone. */
  async function claim(): Promise<Entry[]> {
    lastClaim = Date.now();
    const [next, entries] = (await redis.xautoclaim(key, group, consumer, opts.claimIdleMs, claimCursor, 'COUNT', batch)) as [string, Entry[]];
    claimCursor = next;
    return entries;
  }

  async function write(entries: Entry[]): Promise<void> {
    const rows: string[] = [];
    const rowIds: string[] = [];
    const ids: string[] = [];
    for (const [id, fields] of entries) {
      ids.push(id);
      // A null entry was deleted while pending (acknowledged by a sink that took it over): nothing left to write.
      if (!fields) continue;
      const i = fields.indexOf(RUN_FIELD);
      if (i < 0 || i + 1 >= fields.length) continue;
      const json = fields[i + 1];
      // The rows are joined into one JSON array (agent-runs.ts `recordEncoded`): an entry whose text is no `{...}`
      // could join with its neighbours into rows of neither, so it goes no further.
      if (json.startsWith('{') && json.endsWith('}')) {
        rows.push(json);
        rowIds.push(id);
      } else unreadable(id, json);
    }
    await opts.at?.('read');
    if (rows.length) await record(rows, rowIds);
    await opts.at?.('committed');
    unacked.push(...ids);
    const now = Date.now();
    opts.onCommitted?.(ids.map((id) => Math.max(0, now - idMs(id))));
  }

  /** An entry that holds no row: logged and dropped (acknowledged with its batch). */
  function unreadable(id: string, json: string): void {
    let err: unknown;
    try {
      JSON.parse(json);
      err = new Error('not a usage row');
    } catch (e) {
      err = e;
    }
    logger.error({ err, id }, 'usage sink: unreadable usage entry dropped');
  }

  /**
   * One INSERT for the batch. A batch Postgres refuses for a row's content is written again row by row, so the
   * rows it takes are kept; a row it still refuses is logged (its identity, not its text) and dropped, never
   * retried: one row is lost instead of the sink stopping for every org. Any other error (Postgres down) is
   * thrown, and the batch retried whole. A refused entry that is no JSON at all is logged as unreadable, as
   * before the rows went to Postgres undecoded.
   */
  async function record(rows: string[], ids: string[]): Promise<void> {
    try {
      await store.recordEncoded(rows);
      return;
    } catch (err) {
      if (!refusedForContent(err)) throw err;
    }
    const refused: AgentRun[] = [];
    for (const [n, json] of rows.entries()) {
      try {
        await store.recordEncoded([json]);
      } catch (err) {
        if (!refusedForContent(err)) throw err;
        let row: AgentRun;
        try {
          row = decodeRun(json);
        } catch {
          unreadable(ids[n], json);
          continue;
        }
        refused.push(row);
        const code = (err as { code?: string }).code;
        logger.error({ code, jobId: row.jobId, attempt: row.attempt, orgId: row.orgId, err: (err as Error).message }, 'usage sink: Postgres refused a usage row; dropped');
      }
    }
    if (refused.length) opts.onRefused?.(refused);
  }

  /**
   * Acknowledges (XACK + XDEL) the committed entries; reads nothing (see `next`). A sink killed before it leaves
   * them pending: written again by whoever takes them, to no effect.
   */
  async function acknowledge(): Promise<void> {
    const ids = unacked;
    unacked = [];
    try {
      const [, rows] = (await ackLua([key], [group, '', batch, ...ids])) as [Entry[], number, number];
      observe(rows);
    } catch (err) {
      unacked = ids.concat(unacked);
      throw err;
    }
  }

  /** Resolves when a ride answers, or after `ms`. */
  function rideOrAfter(ms: number): Promise<void> {
    return new Promise<void>((resolve) => {
      const timer = setTimeout(resolve, ms);
      rideSettled = () => {
        clearTimeout(timer);
        resolve();
      };
    }).finally(() => (rideSettled = undefined));
  }

  /**
   * The next entries: the sink offers its call to the next append for one gather period and takes what that
   * ride read; when no append came (or its ride has not answered within `RIDE_WAIT_MS`: a call stuck in a
   * reconnect), it acknowledges on its own and reads (two readers only split the entries).
   */
  async function next(): Promise<Entry[]> {
    let offered = false;
    let waited = false;
    for (;;) {
      if (!running) return [];
      if (inbox.length) return inbox.splice(0, batch);
      if (riding > 0 && !waited) {
        waited = true;
        await rideOrAfter(RIDE_WAIT_MS);
        continue;
      }
      if (!offered && riding === 0) {
        offered = true;
        wanting = true;
        await rideOrAfter(gatherMs);
        wanting = false;
        continue;
      }
      // The sink's own acknowledgement reads nothing: the read after it does, as a command of its own. Read inside
      // the script, each row cost Redis ~20k instructions more (the reply turned into Lua tables and back: at c=1,
      // 439k vs 264k for a batch of 8 rows, ack included), more than the round trip saved; and a read there that
      // found nothing cost an XREADGROUP (every worker process's batch of a throttled org's wake-up did).
      if (unacked.length) {
        await acknowledge();
        // A ride that answered meanwhile brought entries (inbox).
        continue;
      }
      // Blocking: answers at once when entries came meanwhile. No ride is offered while blocked; the next append
      // ends this read.
      return read(false);
    }
  }

  function pause(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const timer = setTimeout(resolve, ms);
      wake = () => {
        clearTimeout(timer);
        resolve();
      };
    });
  }

  async function run(): Promise<void> {
    let pending = true;
    let failures = 0;
    /**
     * The group is gone (the stream lost with a Redis that restarted empty, or deleted by hand): every read fails
     * until it is created again, so it is, whatever the failures so far. Appends meanwhile recreated the stream.
     */
    let groupLost = false;
    while (running) {
      try {
        if (lostRead) {
          lostRead = false;
          // Its own history holds every entry read and not acknowledged, what the inbox holds included.
          inbox = [];
          pending = true;
        }
        if (pending) {
          if (failures === 0 || groupLost) {
            groupLost = false;
            await ensureGroup();
            // At start (a backlog may already be there) and after a failure was overcome.
            await lookAtBacklog();
          }
        }
        const readAt = Date.now();
        const history = pending;
        let entries = history ? await read(true) : await next();
        if (history && entries.length === 0) pending = false;
        if (Date.now() - lastClaim >= opts.claimIdleMs / 2) entries = entries.concat(await claim());
        if (entries.length) await write(entries);
        // The history is read from its start again: what was written is acknowledged before that read.
        if (history && unacked.length) await acknowledge();
        failures = 0;
        // Rows gather into batches (brought by rides meanwhile) instead of costing an INSERT each; longer while
        // they keep coming (`busyGatherMs`), where the INSERTs' fixed cost is what the sink spends.
        const wait = readAt + (entries.length >= busyRows ? busyGatherMs : gatherMs) - Date.now();
        if (!pending && entries.length > 0 && inbox.length < batch && wait > 0 && running) await pause(wait);
      } catch (err) {
        // Committed but unacknowledged entries, and entries read but not written, are all still pending
        // under this consumer: the history read after the pause finds them (a second write is a no-op).
        unacked = [];
        inbox = [];
        if (!running) break;
        failures++;
        // Redis's error code, the reply's first word.
        groupLost = String((err as Error).message).startsWith('NOGROUP');
        // Everything read stays pending under this consumer: re-read from its own history once the pause is over.
        pending = true;
        const ms = Math.min(retryMaxMs, retryBaseMs * 2 ** Math.min(failures - 1, 10));
        logger.warn({ err, retryInMs: ms }, 'usage sink: batch not written; retrying (rows stay in the stream)');
        await lookAtBacklog();
        await pause(ms);
      }
    }
  }

  return {
    /** Hand to the worker's run appender (same stream): its appends carry this sink's acknowledgements and reads. */
    rider,
    start(): void {
      if (running) return;
      running = true;
      loop = run();
    },
    /** Stops after the batch in hand (its rows committed and acknowledged, or left pending for another sink). */
    async close(): Promise<void> {
      running = false;
      wanting = false;
      wake?.();
      rideSettled?.();
      // A blocked XREADGROUP is cut short (nothing read is lost: entries stay unread); a batch being written is
      // let finish, so its rows are acknowledged rather than written again by another sink.
      if (blocked) redis.disconnect();
      // Unless Redis is unreachable: the loop's call then waits for Redis to come back (this connection holds it
      // through reconnects), and a call held when the connection is disconnected is never settled. The loop is
      // left in that call; what it read stays pending under this consumer, written by the sink that takes it over.
      if (!(await whileReachable(redis, loop))) {
        logger.warn('usage sink: Redis unreachable at close; rows read and not acknowledged are left to another sink');
        redis.disconnect();
        return;
      }
      // Entries rides brought and the loop did not reach: written now rather than left for a takeover.
      if (inbox.length && redis.status === 'ready') {
        await write(inbox.splice(0)).catch((err: unknown) => logger.warn({ err }, 'usage sink: last rows not written; another sink takes them over'));
      }
      // The last acknowledgement, when the loop stopped between a commit and its ack.
      if (unacked.length && redis.status === 'ready') await acknowledge().catch((err: unknown) => logger.warn({ err }, 'usage sink: last acknowledgement failed; the rows will be written again, to no effect'));
      // Its name leaves the group when nothing is pending under it (each process start adds a new one); entries
      // still pending stay for a takeover, and so does the name.
      if (redis.status === 'ready') await forgetConsumer().catch((err: unknown) => logger.warn({ err }, 'usage sink: consumer name not removed'));
      redis.disconnect();
    },
  };
}

export type RunSink = ReturnType<typeof createRunSink>;
