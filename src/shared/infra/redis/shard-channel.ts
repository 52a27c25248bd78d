import { Cluster, type Redis } from 'ioredis';
import type { RedisClient } from './connection.js';

/** What `subscribeShardChannel` tells its caller about the subscription. */
export interface ShardChannelHooks {
  /** The subscription is in place (first, or again after `onLost`): messages published from now on arrive. */
  onLive?: () => void;
  /** Messages published from now on may be missed until the next `onLive`. */
  onLost?: () => void;
  /** A re-subscription failed (it is tried again). */
  onError?: (err: unknown) => void;
  /** The connection's heartbeat, set by its first subscription: default HEARTBEAT. */
  heartbeat?: Heartbeat;
}

/**
 * A PING on each subscriber connection every `everyMs` (a single Redis's, or each of a Cluster client's sharded
 * subscriber connections); one not answered within `timeoutMs` ends the socket, so the client reconnects and
 * subscribes again (`onLost`, then `onLive`). A socket whose peer vanished without a FIN or RST (a NAT entry
 * dropped, a partition) would otherwise look connected for as long as TCP takes to give up, minutes, while every
 * message published meanwhile is missed and views served from memory go stale.
 */
export interface Heartbeat {
  everyMs: number;
  timeoutMs: number;
}
export const HEARTBEAT: Heartbeat = { everyMs: 5000, timeoutMs: 3000 };
const heartbeats = new WeakMap<RedisClient, NodeJS.Timeout>();

/** PINGs `conn` unless a PING of it is still out; one not answered within `timeoutMs` destroys its socket. */
const pinging = new WeakSet<Redis>();
function pingOrDrop(conn: Redis, timeoutMs: number): void {
  if (pinging.has(conn) || conn.status !== 'ready') return;
  pinging.add(conn);
  // destroy, not end: a half-open socket never completes an orderly close, so `close` would not come.
  const deadline = setTimeout(() => conn.stream?.destroy(), timeoutMs);
  const done = () => {
    clearTimeout(deadline);
    pinging.delete(conn);
  };
  conn.ping().then(done, done);
}

/**
 * A Cluster client's sharded subscriber connections, one per primary serving a subscribed slot. ioredis owns
 * them and keeps them in a private group (5.11: `shardedSubscribers.shardedSubscribers`, each exposing
 * `getInstance()`); a destroyed one ends (`-node`), and the client replaces it and subscribes it again
 * (`subscribersReady`), as it does for a primary that died. If a later ioredis moves them, there is nothing to
 * ping and the heartbeat test (test/shard-channel-heartbeat.test.ts) fails.
 */
function shardedSubscriberConnections(cluster: Cluster): Redis[] {
  const group = (cluster as unknown as { shardedSubscribers?: { shardedSubscribers?: Map<string, { getInstance(): Redis | null }> } }).shardedSubscribers;
  const conns: Redis[] = [];
  for (const s of group?.shardedSubscribers?.values() ?? []) {
    const conn = s.getInstance();
    if (conn) conns.push(conn);
  }
  return conns;
}

function startHeartbeat(sub: RedisClient, hb: Heartbeat): void {
  if (heartbeats.has(sub)) return;
  const timer = setInterval(() => {
    if (sub instanceof Cluster) for (const conn of shardedSubscriberConnections(sub)) pingOrDrop(conn, hb.timeoutMs);
    else pingOrDrop(sub, hb.timeoutMs);
  }, hb.everyMs);
  timer.unref();
  heartbeats.set(sub, timer);
}

function stopHeartbeat(sub: RedisClient): void {
  clearInterval(heartbeats.get(sub));
  heartbeats.delete(sub);
}

export interface ShardChannelSubscription {
  /** The first SSUBSCRIBE's reply (queued by the client until it is connected). */
  subscribed: Promise<void>;
  /** Stops re-subscribing, removes the listeners and sends SUNSUBSCRIBE (without waiting for the reply: a
   * shard that is down would hold a shutdown; the connection is closed next anyway). */
  close(): void;
}

/**
 * A server-pushed SUNSUBSCRIBE, as ioredis 5.11 reports it: Redis drops a node's shard-channel subscriptions
 * when that node stops serving the channel's slot (CLUSTER FAILOVER demotes it, the slot migrates), and ioredis
 * takes the push for the reply to a command it never sent ("Command queue state error ... Last reply:
 * sunsubscribe,<channel>,<count>") and forgets the channel on that connection without subscribing again.
 */
const SERVER_SUNSUBSCRIBE = /Last reply: sunsubscribe,/;

/** Re-subscription retries back off to this (they add an entry to ioredis's channel list each). */
const RETRY_MAX_MS = 30_000;

/** Channels each subscriber connection holds through subscribeShardChannel. */
const held = new WeakMap<RedisClient, number>();

/**
 * Each subscription listens to the connection's own events (one listener per event and channel), so a
 * connection holding a channel per queue shard passes Node's default of 10 listeners per event and Node
 * warns of a leak. The bound follows the channels held (plus the default for the callers' own listeners), so
 * listeners that pile up beyond the subscriptions are still reported.
 */
function holdChannel(sub: RedisClient, delta: 1 | -1): void {
  const n = (held.get(sub) ?? 0) + delta;
  held.set(sub, n);
  if (n === 0) stopHeartbeat(sub);
  // Two per channel: this module's, and the caller's `smessage` listener for it.
  sub.setMaxListeners(Math.max(10, 10 + 2 * n));
}

/**
 * SSUBSCRIBE `channel` on `sub` (a connection that does nothing but subscribe; the caller listens to
 * `smessage`) and keep it subscribed. Sharded pub/sub: a message is sent to the shard that owns the channel's
 * slot (its primary and replicas) only, never over the whole cluster bus as PUBLISH is, so every agentq
 * channel carries the queue prefix's hash tag and lives in the data's shard.
 *
 * A single Redis re-subscribes by itself after a reconnect (ioredis autoResubscribe). A Cluster client (built
 * with `shardedSubscribers`, see createRedis) holds one subscriber connection per primary that owns a
 * subscribed slot, and replaces it when that connection ends (a killed primary: `-node`, then `subscribersReady`
 * once the slot map shows the new primary). What it does not do is notice the server ending the subscription
 * on a live connection (CLUSTER FAILOVER, a slot migration): the channel then stays silent for good. That push
 * is caught here, the slot map is refreshed and the channel subscribed again; a demoted primary that still
 * serves the slot as a replica accepts SSUBSCRIBE and hears the shard's messages, a migrated slot answers
 * MOVED and the client follows it.
 */
export function subscribeShardChannel(sub: RedisClient, channel: string, hooks: ShardChannelHooks = {}): ShardChannelSubscription {
  let closed = false;
  /** Lost and not confirmed subscribed again yet. */
  let down = false;
  /** Bumped on every loss: an SSUBSCRIBE sent before the last loss confirms nothing. */
  let losses = 0;
  /** One re-subscription at a time: while the shard is unreachable a Cluster client retries each one every
   * retryDelayOnFailover, and each try adds the channel once more to its list of channels to resubscribe. */
  let inflight = false;
  let retryMs = 1000;
  let retry: NodeJS.Timeout | undefined;

  const live = () => {
    if (closed) return;
    down = false;
    retryMs = 1000;
    hooks.onLive?.();
  };
  const lost = () => {
    if (closed) return;
    down = true;
    losses++;
    hooks.onLost?.();
  };
  const resubscribe = () => {
    if (closed || !down || inflight) return;
    clearTimeout(retry);
    inflight = true;
    const seen = losses;
    sub.ssubscribe(channel).then(
      () => {
        inflight = false;
        if (down && seen === losses) live();
        else resubscribe();
      },
      (err: unknown) => {
        inflight = false;
        // A client closed for good has nothing to retry; one connected again says so with `ready`.
        if (closed || !down || sub.status === 'end') return;
        hooks.onError?.(err);
        retry = setTimeout(resubscribe, retryMs);
        retry.unref();
        retryMs = Math.min(retryMs * 2, RETRY_MAX_MS);
      },
    );
  };

  const listeners: Array<[string, (...args: any[]) => void]> = [
    ['close', lost],
    // A single Redis has already re-sent SSUBSCRIBE (autoResubscribe): this one confirms it. A Cluster client
    // re-subscribes on its own after a reconnect and says so with `subscribersReady`.
    ['ready', resubscribe],
  ];
  if (sub instanceof Cluster) {
    const cluster = sub;
    listeners.push(
      // With a node key, `-node` is one of the sharded subscriber connections ending (the pool's nodes come
      // without). It may not be the one that serves this channel (a dead primary's replaced subscriber ends
      // late): the SSUBSCRIBE sent at once then confirms the channel is still heard. While the shard has no
      // primary the client retries that SSUBSCRIBE until one is elected (measured: ~20 list entries over a
      // 4 s election), and the reply is the sign the channel is heard again.
      [
        '-node',
        (_redis: unknown, nodeKey?: string) => {
          if (nodeKey === undefined) return;
          lost();
          resubscribe();
        },
      ],
      // Emitted once the client re-sent SSUBSCRIBE on its subscriber connections, also when one of them could
      // not connect (a dead primary not replaced yet): the SSUBSCRIBE sent here confirms the channel is heard.
      ['subscribersReady', resubscribe],
      [
        'nodeError',
        (err: Error) => {
          if (!SERVER_SUNSUBSCRIBE.test(String(err?.message))) return;
          lost();
          // Sent once the slot map is read anew, so it goes where the slot now is.
          cluster.refreshSlotsCache(() => resubscribe());
        },
      ],
    );
  }
  holdChannel(sub, 1);
  startHeartbeat(sub, hooks.heartbeat ?? HEARTBEAT);
  for (const [event, fn] of listeners) sub.on(event, fn);

  // A first SSUBSCRIBE that fails is retried like a lost one; the caller still hears of it.
  const first = losses;
  const subscribed = sub.ssubscribe(channel).then(
    () => {
      if (!closed && first === losses) hooks.onLive?.();
    },
    (err: unknown) => {
      lost();
      resubscribe();
      throw err;
    },
  );
  return {
    subscribed,
    close() {
      if (closed) return;
      closed = true;
      clearTimeout(retry);
      for (const [event, fn] of listeners) sub.off(event, fn);
      holdChannel(sub, -1);
      sub.sunsubscribe(channel).catch(() => {});
    },
  };
}
