import { Cluster, Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { subscribeShardChannel } from '../src/shared/infra/redis/shard-channel.js';
import { randomPrefix, redisUrl } from './helpers/env.js';
import { POLL, until, waitsTimeout } from './helpers/wait.js';
import { freezableProxy } from './helpers/freezable-proxy.js';
import { startLocalCluster, type LocalCluster } from './helpers/cluster.js';

describe('subscriber heartbeat', () => {
  const cleanup: Array<() => void> = [];
  afterAll(() => cleanup.forEach((f) => f()));

  it('a subscriber connection that stops answering (half-open) is dropped and subscribed again; messages arrive again', async () => {
    const proxy = await freezableProxy(new URL(redisUrl()));
    const sub = new Redis({ host: '127.0.0.1', port: proxy.port, maxRetriesPerRequest: null });
    const pub = new Redis(redisUrl());
    cleanup.push(() => sub.disconnect(), () => pub.disconnect(), () => proxy.close());
    const channel = `${randomPrefix()}:hb`;
    const events: string[] = [];
    const heard: string[] = [];
    sub.on('smessage', (_ch: string, msg: string) => heard.push(msg));
    subscribeShardChannel(sub, channel, { onLive: () => events.push('live'), onLost: () => events.push('lost'), heartbeat: { everyMs: 100, timeoutMs: 300 } });
    await until('subscribed', () => events.includes('live'));
    await pub.spublish(channel, 'one');
    await until('first message', () => heard.includes('one'));

    // The peer goes silent: no FIN, no RST. Without the heartbeat the connection would stay "ready" for minutes,
    // past the wait's hang guard.
    proxy.freeze();
    await until('the loss noticed by the heartbeat', () => events.includes('lost'));
    await until('subscribed again on a new connection', () => events.lastIndexOf('live') > events.indexOf('lost'), 10_000);
    await pub.spublish(channel, 'two');
    await until('a message after the new subscription', () => heard.includes('two'));
    expect(events.slice(0, 3)).toEqual(['live', 'lost', 'live']);
    expect(heard).toEqual(['one', 'two']);
  }, waitsTimeout(POLL.timeout, POLL.timeout, POLL.timeout, 10_000, POLL.timeout));
});

describe('subscriber heartbeat, Redis Cluster', () => {
  let cluster: LocalCluster;
  const cleanup: Array<() => unknown> = [];
  beforeAll(async () => {
    cluster = await startLocalCluster({ primaries: 3 });
  }, 60_000);
  afterAll(async () => {
    cleanup.forEach((f) => f());
    await cluster?.stop();
  });

  it("a Cluster client's sharded subscriber connection that stops answering is replaced and the channel subscribed again", async () => {
    // Every node reached through a proxy (the client maps the addresses the cluster announces onto them).
    const proxies = await Promise.all(cluster.nodes.map((n) => freezableProxy(new URL(`redis://127.0.0.1:${n.port}`))));
    const natMap = Object.fromEntries(cluster.nodes.map((n, i) => [`127.0.0.1:${n.port}`, { host: '127.0.0.1', port: proxies[i].port }]));
    const sub = new Cluster([{ host: '127.0.0.1', port: cluster.nodes[0].port }], { natMap, shardedSubscribers: true, redisOptions: { maxRetriesPerRequest: null } });
    const pub = new Cluster([{ host: '127.0.0.1', port: cluster.nodes[0].port }]);
    cleanup.push(() => sub.disconnect(), () => pub.disconnect(), () => proxies.forEach((p) => p.close()));
    sub.on('error', () => {});
    const channel = `{${randomPrefix()}}:hb`;
    const events: string[] = [];
    const heard: string[] = [];
    sub.on('smessage', (_ch: string, msg: string) => heard.push(msg));
    subscribeShardChannel(sub, channel, { onLive: () => events.push('live'), onLost: () => events.push('lost'), heartbeat: { everyMs: 100, timeoutMs: 300 } });
    await until('subscribed', () => events.includes('live'), 10_000);
    await pub.spublish(channel, 'one');
    await until('first message', () => heard.includes('one'));

    // Every open connection goes silent (no FIN, no RST); new ones pass.
    proxies.forEach((p) => p.freeze());
    await until('the loss noticed by the heartbeat', () => events.includes('lost'));
    await until('subscribed again on a new connection', () => events.lastIndexOf('live') > events.indexOf('lost'), 15_000);
    await pub.spublish(channel, 'two');
    await until('a message after the new subscription', () => heard.includes('two'));
    expect(events[0]).toBe('live');
    expect(events[1]).toBe('lost');
    expect(heard).toEqual(['one', 'two']);
  }, waitsTimeout(10_000, POLL.timeout, POLL.timeout, 15_000, POLL.timeout));
});
