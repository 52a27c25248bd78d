import type { RedisClient } from './connection.js';

const counters = new WeakMap<RedisClient, { n: number }>();

/**
 * How many times `redis` has closed so far (one `close` listener per connection, however many callers ask). A call
 * during which the count moved may have run in Redis while its reply was lost with the connection, and ioredis then
 * sends it again after the reconnect: its reply is the second run's. A caller for whom the first run's reply
 * mattered (what a read delivered) treats it as lost.
 */
export function closesOf(redis: RedisClient): () => number {
  let c = counters.get(redis);
  if (!c) {
    const counter = { n: 0 };
    redis.on('close', () => void counter.n++);
    counters.set(redis, counter);
    c = counter;
  }
  const counter = c;
  return () => counter.n;
}
