import { Redis } from 'ioredis';
import { afterAll, describe, expect, it } from 'vitest';
import { subscribeShardChannel } from '../src/shared/infra/redis/shard-channel.js';
import { randomPrefix, redisUrl } from './helpers/env.js';
import { until } from './helpers/wait.js';
import { freezableProxy } from './helpers/freezable-proxy.js';

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
