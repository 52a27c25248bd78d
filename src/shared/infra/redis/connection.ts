import { execFileSync } from 'node:child_process';
import { join } from 'node:path';
import { Cluster, Redis, type ClusterOptions, type RedisOptions } from 'ioredis';
import calculateSlot from 'cluster-key-slot';
import type { Config } from '../../core/config.js';
import type { Logger } from '../../core/logger.js';
import { pingRedis, startRedisServer, type RedisServerHandle } from './redis-server.js';

export class RedisSetupError extends Error {
  override name = 'RedisSetupError';
}

/** Any agentq connection: a single Redis or a Redis Cluster client (BullMQ accepts both). */
export type RedisClient = Redis | Cluster;

/** Where Redis is: a URL, or a cluster's seed nodes (with the credentials every node shares). */
export type RedisTarget =
  | string
  | { cluster: Array<{ host: string; port: number }>; password?: string; username?: string; tls?: boolean; natMap?: Record<string, { host: string; port: number }> };

/** The target the config names: REDIS_CLUSTER_NODES wins over REDIS_URL (which still lends user/password). */
export function redisTargetOf(cfg: Pick<Config, 'REDIS_URL' | 'REDIS_CLUSTER_NODES' | 'REDIS_PASSWORD' | 'REDIS_TLS' | 'REDIS_NAT_MAP'>): RedisTarget {
  if (!cfg.REDIS_CLUSTER_NODES) return cfg.REDIS_URL;
  const url = new URL(cfg.REDIS_URL);
  const password = cfg.REDIS_PASSWORD ?? (url.password ? decodeURIComponent(url.password) : undefined);
  return {
    cluster: cfg.REDIS_CLUSTER_NODES,
    ...(password ? { password } : {}),
    ...(url.username ? { username: decodeURIComponent(url.username) } : {}),
    tls: cfg.REDIS_TLS || url.protocol === 'rediss:',
    ...(cfg.REDIS_NAT_MAP ? { natMap: cfg.REDIS_NAT_MAP } : {}),
  };
}

export const isCluster = (target: RedisTarget): target is Exclude<RedisTarget, string> => typeof target !== 'string';

/** A log-safe name of the target (never the password). */
export function describeTarget(target: RedisTarget): string {
  if (!isCluster(target)) return new URL(target).host;
  return `cluster ${target.cluster.map((n) => `${n.host}:${n.port}`).join(',')}`;
}

/**
 * `worker`: BullMQ workers and blocking readers, which must wait out outages (maxRetriesPerRequest null).
 * `api`: request paths, which must fail fast while Redis is down instead of queueing commands.
 * `subscriber`: a connection that SSUBSCRIBEs (shard-channel.ts), waiting out outages as `worker` does.
 */
export function createRedis(target: RedisTarget, role: 'worker' | 'api' | 'subscriber', options: RedisOptions = {}): RedisClient {
  // A cluster takes auto-pipelining as a client option (it pipelines per node), not as a node option.
  const { enableAutoPipelining, ...extra } = options;
  const pipelining = enableAutoPipelining === undefined ? {} : { enableAutoPipelining };
  const base: RedisOptions =
    role !== 'api'
      ? { maxRetriesPerRequest: null, enableReadyCheck: true }
      : { maxRetriesPerRequest: 1, enableOfflineQueue: false, connectTimeout: 1000, commandTimeout: 2000 };
  const retryStrategy = (times: number) => Math.min(50 * 2 ** Math.min(times, 6), 2000);
  let client: RedisClient;
  if (isCluster(target)) {
    // A cluster client queues commands while it refreshes slots after a failover (that is what makes a
    // failover error-free); the api role still fails within commandTimeout when no node can answer.
    const { enableOfflineQueue: _offline, ...node } = base;
    const clusterOptions: ClusterOptions = {
      redisOptions: {
        ...node,
        ...(target.password ? { password: target.password } : {}),
        ...(target.username ? { username: target.username } : {}),
        ...(target.tls ? { tls: {} } : {}),
        ...extra,
      },
      clusterRetryStrategy: retryStrategy,
      // While a crashed primary's replica is not yet elected (cluster-node-timeout, then the vote: seconds, 15 s+
      // with Redis's default timeout), every try of a command on its slot is a redirection: a random node
      // answers MOVED to the dead primary, whose connection is closed, retried 200 ms later. ioredis's default
      // budget (16) gives up after about 2 s with "Too many Cluster redirections", which BullMQ does not take
      // for a connection error: a finished job's moveToFinished failed, the job was failed and retried, and ran
      // twice (test/faults/cluster-primary-kill.test.ts). A worker connection waits out the election as it
      // waits out a standalone Redis (maxRetriesPerRequest null); request paths keep the budget and answer 503.
      ...(role !== 'api' ? { maxRedirections: Infinity } : {}),
      enableOfflineQueue: true,
      retryDelayOnFailover: 200,
      retryDelayOnClusterDown: 200,
      retryDelayOnTryAgain: 200,
      slotsRefreshTimeout: 2000,
      // agentq's channels are sharded (SSUBSCRIBE, see shard-channel.ts): without this, a Cluster client sends
      // SSUBSCRIBE over its one classic subscriber connection to a random node, which answers MOVED unless it
      // happens to own the slot. With it, the client keeps a subscriber connection per primary, opened only
      // once a channel in one of that primary's slots is subscribed. Only for subscribers: at every slot
      // refresh (every 5 s per client) the subscriber group compares two JSON copies of the 16384-slot map,
      // and with a Cluster client per queue shard and BullMQ connection that was 3 % of a sharded worker's CPU
      // (bench case "cluster", --cpu-prof). Commands, MULTI and SPUBLISH need no subscriber group.
      ...(role === 'subscriber' ? { shardedSubscribers: true } : {}),
      ...(target.natMap ? { natMap: target.natMap } : {}),
      ...pipelining,
    };
    client = new Cluster(target.cluster, clusterOptions);
  } else {
    client = new Redis(target, { ...base, retryStrategy, ...extra, ...pipelining });
  }
  // Connection errors surface through command rejections; an unhandled 'error' event would crash the process.
  client.on('error', () => {});
  return client;
}

/** The primaries of a cluster (each checked on its own), or the one server. */
export function primariesOf(client: RedisClient): Redis[] {
  return client instanceof Cluster ? client.nodes('master') : [client];
}

/**
 * The connection of `client` to the primary that serves `key`'s slot (the server itself for a single Redis;
 * undefined while a cluster client has no slot map yet). For commands that name no key but must reach that
 * node, such as CLIENT ID of a connection that blocks on `key`: a Cluster client sends those to a random primary.
 */
export function nodeServing(client: RedisClient, key: string): Redis | undefined {
  if (!(client instanceof Cluster)) return client;
  const nodeKey = client.slots[calculateSlot(key)]?.[0];
  return nodeKey === undefined ? undefined : client.nodes('all').find((n) => `${n.options.host}:${n.options.port}` === nodeKey);
}

/** `client`'s connection to the node `node` connects to (the server itself for a single Redis), if it has one. */
export function connectionTo(client: RedisClient, node: Redis): Redis | undefined {
  if (!(client instanceof Cluster)) return client;
  return client.nodes('all').find((n) => n.options.host === node.options.host && n.options.port === node.options.port);
}

function hasRedisServerBinary(): boolean {
  try {
    execFileSync('redis-server', ['--version'], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
}

/**
 * Makes sure something answers at `url`. On a developer machine with nothing running, starts
 * `redis-server` as a child with AOF data under `<dataDir>/redis`.
 */
export async function ensureRedis(opts: { target: RedisTarget; autostart: boolean; dataDir: string; logger: Logger }): Promise<RedisServerHandle | undefined> {
  // A cluster is never started here: it is someone's deployment, and its readiness is checked on connect.
  if (isCluster(opts.target)) return undefined;
  if (await pingRedis(opts.target, 1000)) return undefined;
  const parsed = new URL(opts.target);
  const local = ['127.0.0.1', 'localhost', '::1', '[::1]'].includes(parsed.hostname);
  if (!opts.autostart || !local || !hasRedisServerBinary()) {
    throw new RedisSetupError(
      `Nothing answers at REDIS_URL (${parsed.host}). Start Redis 7 (e.g. \`redis-server --appendonly yes --maxmemory-policy noeviction\`, or \`docker compose up redis\`) or set REDIS_URL.`,
    );
  }
  const port = Number(parsed.port || 6379);
  const dir = join(opts.dataDir, 'redis');
  opts.logger.warn({ port, dir }, 'no Redis answered; starting a local redis-server child (AOF on, noeviction)');
  return startRedisServer({ port, dir });
}

/**
 * BullMQ loses jobs when Redis evicts keys, so any policy but noeviction is refused at start, on every
 * primary of a cluster (one node with another policy is enough to lose jobs).
 */
export async function assertNoEviction(client: RedisClient): Promise<void> {
  // A cluster client knows its primaries only once it has read the slot map.
  if (client instanceof Cluster) await whenReady(client);
  const nodes = primariesOf(client);
  if (client instanceof Cluster && nodes.length === 0) throw new RedisSetupError('the Redis Cluster client knows no primary');
  for (const node of nodes) await assertNodeNoEviction(node, client instanceof Cluster ? `${node.options.host}:${node.options.port}` : undefined);
}

/** Seconds a replica's election takes after `cluster-node-timeout` has marked its primary failed (the vote, a few s). */
export const ELECTION_MARGIN_MS = 3000;

/**
 * Cluster primaries whose failover can outlast a job lock: `cluster-node-timeout` + the election is how long
 * a crashed primary's keys cannot be written, and a BullMQ lock that lapses meanwhile lets the stalled check
 * run that job a second time. Nodes that refuse CONFIG (managed services) are not judged.
 */
export async function lockShorterThanFailover(client: RedisClient, lockDurationMs: number): Promise<Array<{ node: string; nodeTimeoutMs: number }>> {
  if (!(client instanceof Cluster)) return [];
  // Its primaries are known once the client has read the slot map.
  await whenReady(client);
  const short = [];
  for (const node of primariesOf(client)) {
    const reply = (await node.config('GET', 'cluster-node-timeout').catch(() => [])) as string[];
    const nodeTimeoutMs = Number(reply[1]);
    if (Number.isFinite(nodeTimeoutMs) && nodeTimeoutMs > 0 && lockDurationMs < nodeTimeoutMs + ELECTION_MARGIN_MS) {
      short.push({ node: `${node.options.host}:${node.options.port}`, nodeTimeoutMs });
    }
  }
  return short;
}

async function assertNodeNoEviction(redis: Redis, name?: string): Promise<void> {
  let policy: string | undefined;
  try {
    const reply = (await redis.config('GET', 'maxmemory-policy')) as string[];
    policy = reply[1];
  } catch {
    // Managed Redis often disables CONFIG; INFO still reports the policy.
    const info = await redis.info('memory');
    policy = /maxmemory_policy:(\S+)/.exec(info)?.[1];
  }
  if (policy && policy !== 'noeviction') {
    throw new RedisSetupError(
      `Redis${name ? ` node ${name}` : ''} maxmemory-policy is "${policy}"; agentq needs "noeviction" (any other policy can silently drop queued jobs). Run: CONFIG SET maxmemory-policy noeviction`,
    );
  }
}

/**
 * Resolves once the client is connected; fail-fast clients refuse commands until then. A cluster client
 * is ready once it read the slot map, but connects to each primary on first use: those connections are
 * opened here, so a first request does not pay for them inside its command timeout.
 */
export async function whenReady(client: RedisClient, timeoutMs = 5000): Promise<void> {
  await connected(client, timeoutMs);
  if (client instanceof Cluster) await Promise.all(client.nodes('master').map((node) => node.ping()));
}

function connected(client: RedisClient, timeoutMs: number): Promise<void> {
  if (client.status === 'ready') return Promise.resolve();
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      client.off('ready', onReady);
      reject(new RedisSetupError(`Redis did not become ready within ${timeoutMs} ms`));
    }, timeoutMs);
    const onReady = () => {
      clearTimeout(timer);
      resolve();
    };
    client.once('ready', onReady);
  });
}

/**
 * Waits for `work` (calls on `client`, or on another connection to the same Redis) while Redis answers: true once
 * it is done (its rejection thrown), false without waiting once Redis does not. A worker or subscriber connection
 * holds its commands through reconnects until Redis is back, however long that takes, and ioredis never settles a
 * command held that way once the connection is disconnected (its `disconnect()` while reconnecting cancels the
 * reconnect and leaves the queued and in-flight commands pending). A close that waited on such work would last as
 * long as the outage, or forever: it gives up on it instead (the connection not ready now, or lost meanwhile:
 * 'reconnecting'). Work given up on may still settle later; its rejection is then nobody's to report.
 */
export async function whileReachable(client: RedisClient, work: Promise<unknown> | undefined): Promise<boolean> {
  if (!work) return true;
  if (client.status !== 'ready') {
    work.catch(() => undefined);
    return false;
  }
  let stopWatching: (() => void) | undefined;
  const unreachable = new Promise<false>((resolve) => (stopWatching = watchLoss(client, () => resolve(false))));
  try {
    return await Promise.race([work.then(() => true as const), unreachable]);
  } finally {
    stopWatching!();
  }
}

/** The callers waiting for a client's connection to drop, and the one 'reconnecting' listener that tells them. */
const lossWatchers = new WeakMap<RedisClient, { waiters: Set<() => void>; listener: () => void }>();

/**
 * Calls `onLost` when `client` starts reconnecting; returns what stops watching. One listener per client, however
 * many wait at once: the queue shards' workers of a process share one connection and close together, and a
 * listener each (twelve shards) set off Node's leak warning (MaxListenersExceededWarning) at every shutdown.
 */
function watchLoss(client: RedisClient, onLost: () => void): () => void {
  let watch = lossWatchers.get(client);
  if (!watch) {
    const waiters = new Set<() => void>();
    const listener = () => {
      lossWatchers.delete(client);
      client.off('reconnecting', listener);
      for (const waiter of waiters) waiter();
    };
    watch = { waiters, listener };
    lossWatchers.set(client, watch);
    client.on('reconnecting', listener);
  }
  const { waiters, listener } = watch;
  waiters.add(onLost);
  return () => {
    waiters.delete(onLost);
    if (waiters.size === 0 && lossWatchers.get(client)?.waiters === waiters) {
      lossWatchers.delete(client);
      client.off('reconnecting', listener);
    }
  };
}

/** Distinct error messages whose repeats one emitter's log keeps count of (the oldest is forgotten past this). */
const ERROR_KINDS_KEPT = 32;

/**
 * Routes a BullMQ Queue / QueueEvents / Worker / FlowProducer 'error' event into the JSON log. Every BullMQ object
 * made in src/ goes through here: one without a listener has BullMQ console.error each event (a raw stack trace on
 * stderr, not a log line), and a Queue re-emits every error of the connection it was given.
 *
 * During an outage each reconnect attempt of each connection emits one, every 2 s or less: an error is logged the
 * first time, then the same error (the same message) at most once per `everyMs`, with `repeated`, how many were
 * left out since its last line. Keyed by message, so another error (a lost lock naming its job) is never hidden
 * behind an outage's repeats. `source` names the object (not `component`, which a feature's logger already binds).
 * Without a logger (a library caller that gave none) the events are dropped: the same errors reach the caller as
 * rejected commands.
 */
export function logConnectionErrors(
  emitter: { on(event: 'error', fn: (err: Error) => void): unknown },
  logger: Logger | undefined,
  source: string,
  opts: { msg?: string; level?: 'warn' | 'error'; everyMs?: number } = {},
): void {
  const { msg = 'redis connection error', level = 'warn', everyMs = 10_000 } = opts;
  const seen = new Map<string, { at: number; repeated: number }>();
  emitter.on('error', (err: Error) => {
    if (!logger) return;
    const message = err?.message ?? String(err);
    const now = Date.now();
    const last = seen.get(message);
    if (last && now - last.at < everyMs) {
      last.repeated++;
      return;
    }
    seen.delete(message);
    if (seen.size >= ERROR_KINDS_KEPT) seen.delete(seen.keys().next().value!);
    seen.set(message, { at: now, repeated: 0 });
    logger[level]({ err: message, source, ...(last?.repeated ? { repeated: last.repeated } : {}) }, msg);
  });
}
