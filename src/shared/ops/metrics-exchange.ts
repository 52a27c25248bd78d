import { createHash, randomUUID } from 'node:crypto';
import { hostname } from 'node:os';
import { AggregatorRegistry, type Registry } from 'prom-client';
import type { RedisClient } from '../infra/redis/connection.js';
import { defineLua } from '../infra/lua.js';
import type { Logger } from '../core/logger.js';
import { metricsExchangeKey, metricsRetiredKey } from '../core/queue-keys.js';
import { departedPart, minus, type Snapshot } from './metrics-snapshot.js';

const sha1 = (raw: string) => createHash('sha1').update(raw).digest('hex');
const aggregate = (snapshots: Snapshot[]) => AggregatorRegistry.aggregate(snapshots as never) as unknown as Registry;

/**
 * Worker processes serve no HTTP, so each process writes its registry's `getMetricsAsJSON()` into one
 * Redis hash (`<prefix>:agentq:metrics`, a field per process) every `everyMs`. A scrape of any API
 * process sums its own live registry with every other field younger than `staleMs` using prom-client's
 * `AggregatorRegistry.aggregate` (counters and histograms add up; gauges add up too, so only gauges that
 * count something per process belong there). Fields are stamped with Redis time, so host clocks do not
 * matter: the time of the node that holds the exchange, read where the field is written (`metrics-publish-2.lua`)
 * and in the same MULTI as a scrape's read. A keyless TIME goes to any primary of a Redis Cluster, whose clocks
 * may differ: a field stamped by one and judged by another's clock would look stale (folded while its process
 * lives) or stay fresh past its process.
 * A process that leaves (it closes, or a scrape finds its field stale: it crashed) has its counters and histograms
 * folded into the retired totals (`<prefix>:agentq:metrics:retired`, a key of its own so a process of an earlier
 * version, which reads every field of the exchange as a snapshot, still can), which every scrape adds: a summed
 * counter would otherwise go down when a worker exits, and Prometheus would take that for a reset and count the
 * survivors' totals again in `increase()`. Its gauges and `process`-labelled series leave with it. The fold is a
 * compare-and-set (`metrics-retire-2.lua`), so a field is folded once however many scrapes find it stale; a process
 * that was only slow finds its field folded when it publishes next and goes on under a new field, publishing its
 * counts minus the ones already folded. Both keys expire `staleMs` after the last write: once every process has been
 * gone that long, the sum starts from zero, as a restarted server's would.
 */
export function createMetricsExchange(deps: { redis: RedisClient; prefix: string; registry: Registry; everyMs?: number; staleMs?: number; processId?: string; logger: Logger }) {
  // 15 s: a common scrape interval, so a scrape rarely sees a snapshot older than one interval.
  const everyMs = deps.everyMs ?? 15_000;
  const staleMs = deps.staleMs ?? everyMs * 3;
  const key = metricsExchangeKey(deps.prefix);
  const retiredKey = metricsRetiredKey(deps.prefix);
  const keys = [key, retiredKey];
  const processId = deps.processId ?? `${hostname()}:${process.pid}:${randomUUID().slice(0, 8)}`;
  const publishLua = defineLua(deps.redis, 'metrics-publish-2.lua');
  const retireLua = defineLua(deps.redis, 'metrics-retire-2.lua');
  let timer: NodeJS.Timeout | undefined;
  let closed = false;
  let publishing: Promise<void> = Promise.resolve();
  /** The field this process writes, the part of its registry already in the retired totals, and its last written snapshot. */
  let field = processId;
  let generation = 0;
  let counted: Snapshot | undefined;
  let written: Snapshot | undefined;

  const timeMs = ([s, us]: [string | number, string | number]) => Number(s) * 1000 + Math.floor(Number(us) / 1000);
  const snapshot = async () => (await deps.registry.getMetricsAsJSON()) as unknown as Snapshot;

  /**
   * A scrape folded our field `seen`: what we wrote there is counted, so we go on under a new field without it.
   * Once only per field: a publish and a scrape of this process may both find the same field folded.
   */
  function adoptFolded(seen: string): void {
    if (seen !== field) return;
    counted = written;
    written = undefined;
    field = `${processId}~${++generation}`;
  }

  async function publishOnce(): Promise<void> {
    for (;;) {
      // Read before the awaits: a scrape of this process may move us to a new field meanwhile.
      const f = field;
      const base = counted;
      const wrote = written !== undefined;
      const full = await snapshot();
      // Stamped by the script with the exchange's node's time.
      const ok = await publishLua(keys, [f, JSON.stringify(minus(full, base)), staleMs, wrote ? '1' : '0']);
      if (ok === 1) {
        // A copy: prom-client hands out its live value objects, which later increments would change.
        if (f === field) written = structuredClone(full);
        return;
      }
      adoptFolded(f);
    }
  }

  /** Serialised, so close() can wait for the one in flight and no write lands after the fold. */
  function publish(): Promise<void> {
    const next = publishing.then(publishOnce);
    publishing = next.catch(() => {});
    return next;
  }

  /** Both keys, and the time of the node that holds them (TIME rides in the MULTI, so it goes where the keys are). */
  async function readBoth(): Promise<[Record<string, string>, { totals?: string; version?: string }, number]> {
    const replies = await deps.redis.multi().hgetall(key).hgetall(retiredKey).time().exec();
    if (!replies) throw new Error('metrics exchange read aborted');
    for (const [err] of replies) if (err) throw err;
    return [replies[0][1] as Record<string, string>, replies[1][1] as { totals?: string; version?: string }, timeMs(replies[2][1] as [string, string])];
  }

  /** Folds `parts` into the retired totals read as `base` (version `version`) if `fields` still hold what was read. */
  async function retire(base: Snapshot | undefined, version: string, parts: Snapshot[], fields: Array<[string, string]>): Promise<boolean> {
    const totals = await aggregate([...(base ? [base] : []), ...parts.map(departedPart)]).getMetricsAsJSON();
    return (await retireLua(keys, [version, JSON.stringify(totals), staleMs, ...fields.flat()])) === 1;
  }

  return {
    processId,
    publish,

    /** Starts publishing (idempotent). The timer never keeps the process alive. */
    start() {
      if (timer || closed) return;
      timer = setInterval(() => {
        publish().catch((err: unknown) => deps.logger.warn({ err: (err as Error).message }, 'could not publish metrics to Redis'));
      }, everyMs);
      timer.unref();
      void publish().catch(() => {});
    },

    /** This process's live metrics summed with the retired totals and every other process's last fresh snapshot. */
    async collect(): Promise<Registry> {
      // One MULTI: a fold between two separate reads would put a process in both, or in neither.
      const seen = field;
      const [fields, retired, now] = await readBoth();
      if (written && fields[seen] === undefined) adoptFolded(seen);
      const base = retired.totals ? (JSON.parse(retired.totals) as Snapshot) : undefined;
      const live: Snapshot[] = [minus(await snapshot(), counted)];
      const stale: Snapshot[] = [];
      const staleFields: Array<[string, string]> = [];
      for (const [name, raw] of Object.entries(fields)) {
        if (name === field) continue;
        let parsed: { at: number; metrics: Snapshot } | undefined;
        try {
          parsed = JSON.parse(raw) as { at: number; metrics: Snapshot };
        } catch {
          // Unreadable: folded with nothing in it, so it is deleted like any stale field.
        }
        if (parsed && now - parsed.at <= staleMs) live.push(parsed.metrics);
        else {
          stale.push(parsed?.metrics ?? []);
          staleFields.push([name, sha1(raw)]);
        }
      }
      // The answer is summed from this one read, folded or not: a fold another scrape won counted the same fields.
      if (stale.length) await retire(base, retired.version ?? '0', stale, staleFields).catch(() => false);
      return aggregate([...(base ? [base] : []), ...stale.map(departedPart), ...live]);
    },

    async close(): Promise<void> {
      closed = true;
      clearInterval(timer);
      timer = undefined;
      await publishing;
      try {
        for (let attempt = 0; attempt < 5; attempt++) {
          const [fields, retired] = await readBoth();
          const raw = fields[field] ?? null;
          if (written && raw === null) adoptFolded(field);
          const base = retired.totals ? (JSON.parse(retired.totals) as Snapshot) : undefined;
          const version = retired.version;
          if (await retire(base, version ?? '0', [minus(await snapshot(), counted)], [[field, raw === null ? '-' : sha1(raw)]])) return;
        }
        deps.logger.warn('could not fold this process into the retired metrics: the exchange kept changing');
      } catch (err) {
        deps.logger.warn({ err: (err as Error).message }, 'could not fold this process into the retired metrics');
      }
    },
  };
}

export type MetricsExchange = ReturnType<typeof createMetricsExchange>;
