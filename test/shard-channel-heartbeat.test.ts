import { createServer, connect, type Server, type Socket } from 'node:net';
import type { AddressInfo } from 'node:net';
import { Redis } from 'ioredis';
import { afterAll, describe, expect, it } from 'vitest';
import { subscribeShardChannel } from '../src/shared/infra/redis/shard-channel.js';
import { randomPrefix, redisUrl } from './helpers/env.js';
import { until } from './helpers/wait.js';

/**
 * A TCP proxy to the test Redis whose open connections can be frozen: nothing more goes through them either way,
 * and nothing closes them, as with a peer gone behind a dropped NAT entry. New connections pass.
 */
async function freezableProxy(target: URL) {
  const pairs: Array<{ client: Socket; upstream: Socket; frozen: boolean }> = [];
  const server: Server = createServer((client) => {
    const upstream = connect(Number(target.port), target.hostname);
    const pair = { client, upstream, frozen: false };
    pairs.push(pair);
    client.on('data', (d) => void (pair.frozen || upstream.write(d)));
    upstream.on('data', (d) => void (pair.frozen || client.write(d)));
    const end = () => {
      client.destroy();
      upstream.destroy();
    };
    client.on('close', end);
    upstream.on('close', end);
    client.on('error', () => {});
    upstream.on('error', () => {});
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    port: (server.address() as AddressInfo).port,
    freeze: () => pairs.forEach((p) => (p.frozen = true)),
    close: () => {
      pairs.forEach((p) => (p.client.destroy(), p.upstream.destroy()));
      server.close();
    },
  };
}

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

    // The peer goes silent: no FIN, no RST. Without the heartbeat the connection would stay "ready" for minutes.
    proxy.freeze();
    await until('the loss noticed by the heartbeat', () => events.includes('lost'), 5000);
    await until('subscribed again on a new connection', () => events.lastIndexOf('live') > events.indexOf('lost'), 10_000);
    await pub.spublish(channel, 'two');
    await until('a message after the new subscription', () => heard.includes('two'));
    expect(events.slice(0, 3)).toEqual(['live', 'lost', 'live']);
    expect(heard).toEqual(['one', 'two']);
  });
});
