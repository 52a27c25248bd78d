import calculateSlot from 'cluster-key-slot';
import { Queue } from 'bullmq';
import { Redis } from 'ioredis';
import { afterAll, describe, expect, it } from 'vitest';
import { ConfigError, parseConfig } from '../src/shared/core/config.js';
import { earlierShardPrefixes, queueShards, shardOfOrg } from '../src/shared/core/queue-shards.js';
import { shardLayoutKey, usageSinkGroup, usageStreamKey } from '../src/shared/core/queue-keys.js';
import { adoptShardLayout, followShardLayout } from '../src/shared/queue/shard-layout.js';
import { databaseUrl, randomOrg, randomPrefix, redisUrl } from './helpers/env.js';
import { runCli } from './helpers/run-cli.js';

describe('queue shard layout', () => {
  it('one shard is the configured prefix; S shards get tags in S equal slot ranges', () => {
    expect(queueShards('{agentq}', 1).prefixes).toEqual(['{agentq}']);
    expect(queueShards('agentq', 1).prefixes).toEqual(['agentq']);
    for (const count of [2, 3, 12, 64]) {
      const { prefixes } = queueShards('pre:{agentq}:x', count);
      expect(new Set(prefixes).size).toBe(count);
      prefixes.forEach((p, k) => {
        expect(p).toMatch(/^pre:\{agentq\.s\d+(\.\d+)?\}:x$/);
        const slot = calculateSlot(p);
        expect(slot).toBeGreaterThanOrEqual(Math.round((k * 16384) / count));
        expect(slot).toBeLessThan(Math.round(((k + 1) * 16384) / count));
      });
    }
    expect(() => queueShards('agentq', 2)).toThrow(/hash tag/);
    expect(() => queueShards('{agentq}', 0)).toThrow(RangeError);
  });

  it("puts S / P shards on each of P primaries as redis-cli splits the slots, also for a tag on a range's edge", () => {
    // redis-cli --cluster create: primary j of P starts at lround(j x 16384 / P).
    const primaryOf = (slot: number, primaries: number) => {
      let j = 0;
      while (j + 1 < primaries && slot >= Math.round(((j + 1) * 16384) / primaries)) j++;
      return j;
    };
    const perPrimary = (prefixes: readonly string[], primaries: number) => {
      const n = new Array<number>(primaries).fill(0);
      for (const p of prefixes) n[primaryOf(calculateSlot(p), primaries)]++;
      return n;
    };
    // A prefix whose shard 3 of 12 got the slot where the second of 3 primaries begins (5461) from earlier versions.
    let edge = '';
    for (let i = 0; !edge && i < 100_000; i++) if (calculateSlot(earlierShardPrefixes(`{e${i}}`, 12)[3]) === 5461) edge = `{e${i}}`;
    expect(edge).not.toBe('');
    expect(perPrimary(earlierShardPrefixes(edge, 12), 3)).toEqual([3, 5, 4]);
    expect(perPrimary(queueShards(edge, 12).prefixes, 3)).toEqual([4, 4, 4]);
    for (const [count, primaries] of [[12, 3], [6, 3], [8, 4], [12, 6], [10, 5]]) {
      for (let i = 0; i < 200; i++) expect(perPrimary(queueShards(`{p${i}}`, count).prefixes, primaries)).toEqual(new Array(primaries).fill(count / primaries));
    }
  });

  it('an org always maps to the same shard, and orgs spread evenly', () => {
    expect(shardOfOrg('org_a', 12)).toBe(shardOfOrg('org_a', 12));
    const layout = queueShards('{agentq}', 12);
    expect(layout.prefixOf('org_a')).toBe(layout.prefixes[shardOfOrg('org_a', 12)]);
    expect(queueShards('{agentq}', 1).prefixOf('org_a')).toBe('{agentq}');
    const counts = new Array<number>(8).fill(0);
    for (let i = 0; i < 8000; i++) counts[shardOfOrg(`org_${i}`, 8)]++;
    for (const c of counts) expect(Math.abs(c - 1000)).toBeLessThan(150);
  });

  it('QUEUE_SHARDS is validated when parsed, naming the variable', () => {
    expect(parseConfig({ QUEUE_SHARDS: '12' }).QUEUE_SHARDS).toBe(12);
    expect(parseConfig({}).QUEUE_SHARDS).toBe(1);
    expect(() => parseConfig({ QUEUE_SHARDS: '0' })).toThrow(/QUEUE_SHARDS/);
    expect(() => parseConfig({ QUEUE_SHARDS: '1000' })).toThrow(/QUEUE_SHARDS/);
    expect(() => parseConfig({ QUEUE_SHARDS: '4', QUEUE_PREFIX: 'agentq' })).toThrow(/QUEUE_PREFIX=.*hash tag/);
  });

  describe('changing the shard count on a live system', () => {
    const redis = new Redis(redisUrl());
    afterAll(() => redis.disconnect());

    it('records the layout, refuses a new count while the old layout has unfinished jobs, adopts it once drained', async () => {
      const prefix = randomPrefix();
      expect(await adoptShardLayout({ redis, prefix, shards: 1 })).toEqual({ previous: 1, changed: false });
      expect(await redis.get(shardLayoutKey(prefix))).toBe('1');
      const queue = new Queue('agent-jobs', { connection: redis, prefix });
      const job = await queue.add('j', { orgId: 'o' });
      const refused = adoptShardLayout({ redis, prefix, shards: 4 });
      await expect(refused).rejects.toThrow(ConfigError);
      await expect(refused).rejects.toThrow(/QUEUE_SHARDS=4: the queue is laid out in 1 shard\(s\) and 1 job\(s\) there are unfinished/);
      expect(await redis.get(shardLayoutKey(prefix))).toBe('1');
      await job.remove();
      expect(await adoptShardLayout({ redis, prefix, shards: 4 })).toEqual({ previous: 1, changed: true });
      expect(await redis.get(shardLayoutKey(prefix))).toBe('4');
      // Back to one shard: the four shards' queues are checked now.
      const shard = new Queue('agent-jobs', { connection: redis, prefix: queueShards(prefix, 4).prefixes[2] });
      await shard.add('j', { orgId: 'o' }, { delay: 60_000 });
      await expect(adoptShardLayout({ redis, prefix, shards: 1 })).rejects.toThrow(/laid out in 4 shard\(s\) and 1 job\(s\)/);
      await shard.obliterate({ force: true });
      expect(await adoptShardLayout({ redis, prefix, shards: 1 })).toEqual({ previous: 4, changed: true });
      await shard.close();
      await queue.obliterate({ force: true });
      await queue.close();
    });

    it('refuses a new count while the old layout\'s usage streams hold rows not yet written to Postgres, pending or never read', async () => {
      const prefix = randomPrefix();
      await adoptShardLayout({ redis, prefix, shards: 1 });
      // Two finished attempts' rows Postgres was too slow for: one read by a sink (pending), one never delivered.
      const stream = usageStreamKey(prefix);
      await redis.xgroup('CREATE', stream, usageSinkGroup, '0', 'MKSTREAM');
      await redis.xadd(stream, '*', 'row', JSON.stringify({ job_id: 'j1' }));
      await redis.xreadgroup('GROUP', usageSinkGroup, 'sink-1', 'COUNT', 1, 'STREAMS', stream, '>');
      await redis.xadd(stream, '*', 'row', JSON.stringify({ job_id: 'j2' }));
      const refused = adoptShardLayout({ redis, prefix, shards: 4 });
      await expect(refused).rejects.toThrow(ConfigError);
      await expect(refused).rejects.toThrow(/QUEUE_SHARDS=4: the queue is laid out in 1 shard\(s\) and 2 usage row\(s\) there are not yet written to Postgres; drain them with QUEUE_SHARDS=1 first/);
      expect(await redis.get(shardLayoutKey(prefix))).toBe('1');
      // The sink writes them and acknowledges as it does (XACK + XDEL): the change goes through.
      const entries = (await redis.xrange(stream, '-', '+')).map(([id]) => id);
      await redis.xack(stream, usageSinkGroup, ...entries);
      await redis.xdel(stream, ...entries);
      expect(await adoptShardLayout({ redis, prefix, shards: 4 })).toEqual({ previous: 1, changed: true });
      await redis.del(stream, shardLayoutKey(prefix));
    });

    it("refuses to start while unfinished jobs wait under a shard prefix an earlier version chose, and starts once they are gone", async () => {
      // A prefix with a shard whose earlier tag sits on a slot range's edge, so this version names it otherwise.
      let prefix = '';
      for (let i = 0; !prefix && i < 100_000; i++) {
        const p = `{${randomPrefix().slice(1, -1)}-${i}}`;
        if (earlierShardPrefixes(p, 12).some((e, k) => e !== queueShards(p, 12).prefixes[k])) prefix = p;
      }
      expect(prefix).not.toBe('');
      await redis.set(shardLayoutKey(prefix), '12');
      const moved = earlierShardPrefixes(prefix, 12).find((e) => !queueShards(prefix, 12).prefixes.includes(e))!;
      const queue = new Queue('agent-jobs', { connection: redis, prefix: moved });
      const job = await queue.add('j', { orgId: 'o' });
      const refused = adoptShardLayout({ redis, prefix, shards: 12 });
      await expect(refused).rejects.toThrow(ConfigError);
      await expect(refused).rejects.toThrow(/QUEUE_SHARDS=12: 1 unfinished job\(s\) wait under shard prefixes an earlier agentq version chose/);
      // A new count checks those prefixes too.
      await expect(adoptShardLayout({ redis, prefix, shards: 4 })).rejects.toThrow(/laid out in 12 shard\(s\) and 1 job\(s\)/);
      await job.remove();
      expect(await adoptShardLayout({ redis, prefix, shards: 12 })).toEqual({ previous: 12, changed: false });
      await queue.obliterate({ force: true });
      await queue.close();
      await redis.del(shardLayoutKey(prefix));
    });
  });

  describe('processes that follow the recorded layout (direct producer, CLIs)', () => {
    const redis = new Redis(redisUrl());
    afterAll(() => redis.disconnect());

    it('take the recorded count when given none, refuse one that differs, and never change the record', async () => {
      const prefix = randomPrefix();
      expect(await followShardLayout({ redis, prefix })).toBe(1);
      expect(await redis.get(shardLayoutKey(prefix))).toBeNull();
      await redis.set(shardLayoutKey(prefix), '4');
      expect(await followShardLayout({ redis, prefix })).toBe(4);
      expect(await followShardLayout({ redis, prefix, shards: 4 })).toBe(4);
      const refused = followShardLayout({ redis, prefix, shards: 1 });
      await expect(refused).rejects.toThrow(ConfigError);
      await expect(refused).rejects.toThrow(`QUEUE_SHARDS=1: the queue under ${prefix} is laid out in 4 shard(s)`);
      expect(await redis.get(shardLayoutKey(prefix))).toBe('4');
      await redis.del(shardLayoutKey(prefix));
    });

    it('npm run orgs without QUEUE_SHARDS sets the plan in the org\'s shard of the recorded layout; with another count it exits 1', { timeout: 240_000 }, async () => {
      const prefix = randomPrefix();
      const org = randomOrg();
      await redis.set(shardLayoutKey(prefix), '4');
      const env = { DATABASE_URL: databaseUrl(), REDIS_URL: redisUrl(), QUEUE_PREFIX: prefix };
      const set = await runCli('src/app/cli/orgs.ts', ['set', org, '--weight', '3'], { ...env, QUEUE_SHARDS: undefined });
      expect(set.stderr).toBe('');
      expect(set.code).toBe(0);
      expect(await redis.hget(`${queueShards(prefix, 4).prefixOf(org)}:fq:plan:${org}`, 'weight')).toBe('3');
      const refused = await runCli('src/app/cli/orgs.ts', ['set', org, '--weight', '2'], { ...env, QUEUE_SHARDS: '2' });
      expect(refused.code).toBe(1);
      expect(refused.stderr).toContain('QUEUE_SHARDS=2: the queue under');
      expect(refused.stderr).toContain('laid out in 4 shard(s)');
      expect(await redis.hget(`${queueShards(prefix, 4).prefixOf(org)}:fq:plan:${org}`, 'weight')).toBe('3');
      await redis.del(shardLayoutKey(prefix));
    });
  });
});
