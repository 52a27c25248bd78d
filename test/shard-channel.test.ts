import { Redis } from 'ioredis';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { subscribeShardChannel } from '../src/shared/infra/redis/shard-channel.js';
import { queueShards } from '../src/shared/core/queue-shards.js';
import { randomPrefix, redisUrl } from './helpers/env.js';
import { POLL } from './helpers/wait.js';

const clients: Redis[] = [];
afterEach(() => {
  for (const c of clients.splice(0)) c.disconnect();
});

describe('sharded channels on one subscriber connection', () => {
  it('holds a channel per queue shard without a listener-leak warning, and hears each one', async () => {
    const sub = new Redis(redisUrl());
    const pub = new Redis(redisUrl());
    clients.push(sub, pub);
    const warnings: string[] = [];
    const onWarning = (w: Error) => warnings.push(w.name);
    process.on('warning', onWarning);
    try {
      const channels = queueShards(randomPrefix(), 12).prefixes.map((p) => `${p}:agentq:cancel`);
      const heard = new Set<string>();
      const subs = channels.map((channel) => {
        // As the callers do: an `smessage` listener of their own beside each subscription.
        sub.on('smessage', (ch: string) => {
          if (ch === channel) heard.add(ch);
        });
        return subscribeShardChannel(sub, channel);
      });
      await Promise.all(subs.map((s) => s.subscribed));
      for (const channel of channels) await pub.spublish(channel, 'x');
      await vi.waitFor(() => expect(heard.size).toBe(12), POLL);
      // Node reports a leak on the next tick after the listener that passes the bound.
      await new Promise((r) => setImmediate(r));
      expect(warnings.filter((w) => w === 'MaxListenersExceededWarning')).toEqual([]);
      for (const s of subs) s.close();
      expect(sub.listenerCount('ready')).toBe(0);
      // The bound follows the channels held: back to Node's default once they are all closed.
      expect(sub.getMaxListeners()).toBe(10);
    } finally {
      process.off('warning', onWarning);
    }
  });
});
