import { createHash, randomUUID } from 'node:crypto';
import { once } from 'node:events';
import { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { usageSinkGroup, usageStreamKey } from '../src/shared/core/queue-keys.js';
import { createLogger } from '../src/shared/core/logger.js';
import { createRunStore, type AgentRun } from '../src/shared/infra/db/agent-runs.js';
import { migrate } from '../src/shared/infra/db/migrate.js';
import { createPool } from '../src/shared/infra/db/pool.js';
import { createRunAppender, encodeRun, RUN_FIELD } from '../src/shared/infra/db/run-stream.js';
import { defineLua, readLua } from '../src/shared/infra/lua.js';
import { createRunSink } from '../src/shared/infra/db/run-sink.js';
import { freezableProxy } from './helpers/freezable-proxy.js';
import { refusedForContent } from '../src/shared/infra/db/pg-content.js';
import { databaseUrl, randomOrg, randomPrefix, redisUrl } from './helpers/env.js';
import { POLL, until, waitsTimeout, within } from './helpers/wait.js';
import { createRedis } from '../src/shared/infra/redis/connection.js';
import { monitorRedis } from './helpers/fair.js';
import { startRedisServer } from '../src/shared/infra/redis/redis-server.js';

const pool = createPool(databaseUrl(), { max: 4 });
/**
 * The sinks' takeover (XAUTOCLAIM) idle time: what writes a lost read's rows when nothing else does. A test of a
 * quicker path bounds its time at half of it, a margin no busy machine eats.
 */
const CLAIM_IDLE_MS = 60_000;
const redis = new Redis(redisUrl(), { maxRetriesPerRequest: null });
const logger = createLogger({ level: 'silent' });
const run = (orgId: string, jobId: string, attempt = 1, over: Partial<AgentRun> = {}): AgentRun => ({
  jobId,
  attempt,
  orgId,
  agent: 'RiskAnalyzer',
  action: 'analyze_risks',
  model: 'gemini-2.5-pro',
  state: 'completed',
  inputTokens: 10,
  outputTokens: 20,
  costUsd: 0.0001,
  durationMs: 5,
  ...over,
});

/** A sink on its own connection, over a store that can be made to fail like a Postgres that is down. */
function sinkFor(
  key: string,
  store: { recordEncoded(rows: string[]): Promise<number> },
  onCommitted?: (lags: number[]) => void,
  blockMs = 200,
  backlog?: { backlogMax: number; onBacklog(over: boolean, rows: number): void },
  more: Partial<Parameters<typeof createRunSink>[0]> = {},
) {
  return createRunSink({
    redis: new Redis(redisUrl(), { maxRetriesPerRequest: null }),
    key,
    group: usageSinkGroup,
    consumer: `c-${randomUUID().slice(0, 8)}`,
    store,
    claimIdleMs: CLAIM_IDLE_MS,
    retryBaseMs: 10,
    retryMaxMs: 50,
    blockMs,
    logger,
    ...(onCommitted ? { onCommitted } : {}),
    ...backlog,
    ...more,
  });
}

const rowsOf = async (jobIds: string[]) =>
  (await pool.query('SELECT job_id, attempt, state, input_tokens, cost_usd, error, created_at FROM agent_runs WHERE job_id = ANY($1) ORDER BY job_id, attempt', [jobIds])).rows;

describe('usage rows written behind (Redis Stream -> run sink -> agent_runs)', () => {
  beforeAll(() => migrate(pool));
  afterAll(async () => {
    redis.disconnect();
    await pool.end();
  });

  it('a row appended while the sink blocks ends its read: committed long before the block would end', async () => {
    const key = usageStreamKey(randomPrefix());
    const org = randomOrg();
    const lags: number[] = [];
    // A block (production: 5 s) longer than the test can run (claimIdleMs caps it at half): the row can only be
    // written because the read returned when the entry arrived. The delay is printed, not bounded.
    const sink = sinkFor(key, createRunStore({ pool }), (l) => lags.push(...l), 600_000, undefined, { claimIdleMs: 1_200_000 });
    const appender = createRunAppender({ redis, key });
    sink.start();
    // The sink is in its blocking read once its consumer shows in the group (it registers on its first read).
    // Blocked in its XREADGROUP: its consumer exists (first read done) and a client is blocked in that command.
    const blocked = async () =>
      ((await redis.xinfo('GROUPS', key).catch(() => [])) as Array<Array<unknown>>).some((g) => Number(g[3]) >= 1) &&
      String(await redis.client('LIST')).split('\n').some((c) => c.includes('cmd=xreadgroup') && /flags=\S*b/.test(c));
    await until('the sink to block', blocked);
    const id = `blocked-${org}`;
    const appended = Date.now();
    await appender.record(run(org, id));
    await until('the row written', async () => (await rowsOf([id])).length === 1);
    const ms = Date.now() - appended;
    await sink.close();
    // The batch gather (100 ms) and the insert are the lag.
    console.log(`[figure] usage row appended while the sink blocks -> committed: ${ms} ms (the sink's own lag ${lags[0]} ms)`);
    expect(lags).toHaveLength(1);
  }, waitsTimeout(POLL.timeout, POLL.timeout));

  it('writes appended rows in batches, with their own end time, and reports the lag of each', async () => {
    const key = usageStreamKey(randomPrefix());
    const org = randomOrg();
    const store = createRunStore({ pool });
    let inserts = 0;
    const lags: number[] = [];
    const sink = sinkFor(key, { recordEncoded: (r) => (inserts++, store.recordEncoded(r)) }, (l) => lags.push(...l));
    const appender = createRunAppender({ redis, key });
    const ended = new Date(Date.now() - 60_000);
    // Appended before the sink starts: the consumer group reads the stream from its start.
    await appender.record(run(org, `early-${org}`, 1, { createdAt: ended }));
    sink.start();
    const ids = Array.from({ length: 200 }, (_, i) => `job-${org}-${i}`);
    await Promise.all(ids.map((id) => appender.record(run(org, id, 1, { state: id.endsWith('7') ? 'failed' : 'completed', error: id.endsWith('7') ? 'boom' : null }))));
    await until('every row written', async () => (await rowsOf([...ids, `early-${org}`])).length === 201);
    await sink.close();
    expect(inserts).toBeLessThan(201);
    expect(await redis.xlen(key)).toBe(0);
    expect(lags).toHaveLength(201);
    const rows = await rowsOf([`early-${org}`, `job-${org}-7`]);
    expect(new Date(rows[0].created_at).getTime()).toBe(ended.getTime());
    expect(rows[1]).toMatchObject({ state: 'failed', error: 'boom', input_tokens: 10 });
    const sorted = [...lags].sort((a, b) => a - b);
    console.log(`[figure] usage row lag, append -> commit, 201 rows (ms): p50 ${sorted[100]}, max ${sorted[200]} (the early row waited for the sink to start)`);
  });

  it('a read whose reply was lost with its connection is read again from the sink\'s history after the re-sent read, not left for XAUTOCLAIM', async () => {
    const key = usageStreamKey(randomPrefix());
    const org = randomOrg();
    const proxy = await freezableProxy(new URL(redisUrl()));
    const conn = new Redis({ host: '127.0.0.1', port: proxy.port, maxRetriesPerRequest: null });
    const clientId = String(await conn.client('ID'));
    const sink = createRunSink({ redis: conn, key, group: usageSinkGroup, consumer: `c-${randomUUID().slice(0, 8)}`, store: createRunStore({ pool }), claimIdleMs: CLAIM_IDLE_MS, retryBaseMs: 10, retryMaxMs: 50, blockMs: 1000, logger });
    sink.start();
    const blockedHere = async () => String(await redis.client('LIST')).split('\n').some((c) => c.startsWith(`id=${clientId} `) && c.includes('cmd=xreadgroup') && /flags=\S*b/.test(c));
    await until('the sink to block', blockedHere);
    // Redis answers the blocked read with the new row; the answer never arrives, then the connection is reset.
    proxy.dropReplies();
    const id = `lost-reply-${org}`;
    // Before the delivery: the takeover's idle time counts from it.
    const appended = Date.now();
    await createRunAppender({ redis, key }).record(run(org, id));
    await until('the row delivered to the sink (pending under it)', async () => ((await redis.xpending(key, usageSinkGroup)) as [number])[0] === 1);
    proxy.reset();
    await until('the row written', async () => (await rowsOf([id])).length === 1);
    // Within the read ioredis sent again after the reconnect (a 1 s block here), long before XAUTOCLAIM could.
    expect(Date.now() - appended).toBeLessThan(CLAIM_IDLE_MS / 2);
    await sink.close();
    proxy.close();
  }, waitsTimeout(POLL.timeout, POLL.timeout, POLL.timeout));

  it('a stream lost with its group (a Redis that restarted empty): the sink creates the group again and writes what is appended after', async () => {
    const key = usageStreamKey(randomPrefix());
    const org = randomOrg();
    const appender = createRunAppender({ redis, key });
    const sink = sinkFor(key, createRunStore({ pool }));
    sink.start();
    await appender.record(run(org, `before-${org}`));
    await until('the first row written', async () => (await rowsOf([`before-${org}`])).length === 1);
    await redis.del(key);
    await appender.record(run(org, `after-${org}`));
    await until('the row appended after the loss written', async () => (await rowsOf([`after-${org}`])).length === 1);
    await sink.close();
    expect(await redis.xinfo('GROUPS', key)).toHaveLength(1);
    // Closed with nothing pending: its consumer name left the group (a name per process start no longer piles up).
    expect(await redis.xinfo('CONSUMERS', key, usageSinkGroup)).toEqual([]);
  }, waitsTimeout(POLL.timeout, POLL.timeout));

  it('an attempt appended twice (a re-delivered attempt) is one row: idempotent on (job_id, attempt)', async () => {
    const key = usageStreamKey(randomPrefix());
    const org = randomOrg();
    const appender = createRunAppender({ redis, key });
    await appender.record(run(org, `dup-${org}`, 1, { inputTokens: 1 }));
    await appender.record(run(org, `dup-${org}`, 1, { inputTokens: 2 }));
    await appender.record(run(org, `dup-${org}`, 2, { inputTokens: 3 }));
    const sink = sinkFor(key, createRunStore({ pool }));
    sink.start();
    await until('stream drained', async () => (await redis.xlen(key)) === 0);
    await sink.close();
    expect((await rowsOf([`dup-${org}`])).map((r) => [r.attempt, r.input_tokens])).toEqual([
      [1, 1],
      [2, 3],
    ]);
  });

  it('Postgres down: rows stay in the stream through every failed try, then are written exactly once', async () => {
    const key = usageStreamKey(randomPrefix());
    const org = randomOrg();
    const store = createRunStore({ pool });
    let down = true;
    let failures = 0;
    // A pool that errors like one whose server is gone (connection refused), until the outage ends.
    const sink = sinkFor(key, {
      recordEncoded: (r) => {
        if (!down) return store.recordEncoded(r);
        failures++;
        return Promise.reject(Object.assign(new Error('connect ECONNREFUSED 127.0.0.1:5432'), { code: 'ECONNREFUSED' }));
      },
    });
    const appender = createRunAppender({ redis, key });
    sink.start();
    const ids = Array.from({ length: 30 }, (_, i) => `pgdown-${org}-${i}`);
    // Rows keep arriving during the outage; the sink keeps failing on them.
    for (const id of ids.slice(0, 10)) await appender.record(run(org, id));
    await until('three failed tries', () => failures >= 3);
    for (const id of ids.slice(10)) await appender.record(run(org, id));
    await until('more failed tries after the later rows', () => failures >= 6);
    expect(await redis.xlen(key)).toBe(30);
    expect(await rowsOf(ids)).toHaveLength(0);
    down = false;
    await until('stream drained after the outage', async () => (await redis.xlen(key)) === 0);
    await sink.close();
    const rows = await rowsOf(ids);
    expect(rows).toHaveLength(30);
    expect((await redis.xpending(key, usageSinkGroup))[0]).toBe(0);
  }, waitsTimeout(POLL.timeout, POLL.timeout, POLL.timeout));

  it('a row Postgres refuses for its content is dropped alone, logged and counted: the rows around it are written, the sink goes on', async () => {
    const key = usageStreamKey(randomPrefix());
    const org = randomOrg();
    const store = createRunStore({ pool });
    // A row Postgres would refuse (here: a token count past its integer column), beside good ones.
    const bad = run(org, `poison-${org}`, 1, { inputTokens: 2 ** 40 });
    const good = Array.from({ length: 6 }, (_, i) => run(org, `around-${org}-${i}`));
    const refused: AgentRun[] = [];
    const sink = sinkFor(key, store, undefined, 200, undefined, { gatherMs: 300, onRefused: (rows) => refused.push(...rows) });
    const appender = createRunAppender({ redis, key });
    for (const r of [...good.slice(0, 3), bad, ...good.slice(3)]) await appender.record(r);
    sink.start();
    await until('stream drained', async () => (await redis.xlen(key)) === 0);
    const later = run(org, `after-${org}`);
    await appender.record(later);
    await until('a later row written', async () => (await rowsOf([later.jobId])).length === 1);
    await sink.close();
    expect((await rowsOf(good.map((r) => r.jobId))).length).toBe(6);
    expect(await rowsOf([bad.jobId])).toHaveLength(0);
    expect(refused.map((r) => r.jobId)).toEqual([bad.jobId]);
    expect((await redis.xpending(key, usageSinkGroup))[0]).toBe(0);
  }, waitsTimeout(POLL.timeout, POLL.timeout));

  it('an entry that holds no row (not JSON, cut short, no object) is dropped and logged as unreadable, never counted as refused: the rows around it are written', async () => {
    const key = usageStreamKey(randomPrefix());
    const org = randomOrg();
    const store = createRunStore({ pool });
    const good = Array.from({ length: 4 }, (_, i) => run(org, `beside-${org}-${i}`));
    const refused: AgentRun[] = [];
    const logged: string[] = [];
    const sink = sinkFor(key, store, undefined, 200, undefined, {
      gatherMs: 300,
      onRefused: (rows) => refused.push(...rows),
      logger: Object.assign(Object.create(logger) as typeof logger, { error: (_o: unknown, msg: string) => logged.push(msg) }),
    });
    // The sink sends its rows' JSON to Postgres undecoded, in one array: a cut-short entry must not spoil the others'.
    const junk = ['not json', '42', encodeRun(run(org, `cut-${org}`)).slice(0, -5) + '}'];
    await redis.xadd(key, '*', RUN_FIELD, encodeRun(good[0]));
    for (const [i, j] of junk.entries()) {
      await redis.xadd(key, '*', RUN_FIELD, j);
      await redis.xadd(key, '*', RUN_FIELD, encodeRun(good[i + 1]));
    }
    sink.start();
    await until('stream drained', async () => (await redis.xlen(key)) === 0);
    await sink.close();
    expect(await rowsOf(good.map((r) => r.jobId))).toHaveLength(4);
    expect(await rowsOf([`cut-${org}`])).toHaveLength(0);
    expect(refused).toEqual([]);
    expect(logged.filter((m) => m === 'usage sink: unreadable usage entry dropped')).toHaveLength(3);
    expect((await redis.xpending(key, usageSinkGroup))[0]).toBe(0);
  }, waitsTimeout(POLL.timeout));

  it('tells a refusal for a row\'s content (SQLSTATE classes 22 and 23) from a Postgres that is down or busy', () => {
    expect(refusedForContent(Object.assign(new Error('integer out of range'), { code: '22003' }))).toBe(true);
    expect(refusedForContent(Object.assign(new Error('invalid byte sequence'), { code: '22021' }))).toBe(true);
    expect(refusedForContent(Object.assign(new Error('check violation'), { code: '23514' }))).toBe(true);
    expect(refusedForContent(Object.assign(new Error('connect ECONNREFUSED'), { code: 'ECONNREFUSED' }))).toBe(false);
    expect(refusedForContent(Object.assign(new Error('terminating connection'), { code: '57P01' }))).toBe(false);
    expect(refusedForContent(Object.assign(new Error('deadlock'), { code: '40P01' }))).toBe(false);
    expect(refusedForContent(new Error('no code'))).toBe(false);
  });

  it('a backlog over its limit is reported while Postgres is down, and its end once written back to 80 %', async () => {
    const key = usageStreamKey(randomPrefix());
    const org = randomOrg();
    const store = createRunStore({ pool });
    let down = true;
    const reports: Array<[boolean, number]> = [];
    const sink = sinkFor(key, { recordEncoded: (r) => (down ? Promise.reject(new Error('connect ECONNREFUSED 127.0.0.1:5432')) : store.recordEncoded(r)) }, undefined, 200, {
      backlogMax: 5,
      onBacklog: (over, rows) => reports.push([over, rows]),
    });
    const appender = createRunAppender({ redis, key });
    const ids = Array.from({ length: 8 }, (_, i) => `backlog-${org}-${i}`);
    for (const id of ids.slice(0, 5)) await appender.record(run(org, id));
    sink.start();
    // At the limit, not over it: nothing reported however often the sink fails.
    await until('the sink failing on the first rows', async () => ((await redis.xpending(key, usageSinkGroup).catch(() => [0])) as [number])[0] === 5);
    for (const id of ids.slice(5)) await appender.record(run(org, id));
    await until('the backlog reported over its limit', () => reports.length === 1);
    // Reported when the sink first looks past the limit: between two of the three appends (a retry's XLEN) or after them.
    expect(reports[0][0]).toBe(true);
    expect(reports[0][1]).toBeGreaterThan(5);
    expect(reports[0][1]).toBeLessThanOrEqual(8);
    down = false;
    await until('the backlog reported written down', () => reports.length === 2);
    expect(reports[1][0]).toBe(false);
    expect(reports[1][1]).toBeLessThanOrEqual(4);
    // The end is reported after the first batch written back; the rest follows in the next batches (close()
    // stops after the batch in hand, so wait for the stream to drain first).
    await until('stream drained after the outage', async () => (await redis.xlen(key)) === 0);
    await sink.close();
    expect(await rowsOf(ids)).toHaveLength(8);
  }, waitsTimeout(POLL.timeout, POLL.timeout, POLL.timeout, POLL.timeout));

  /** A sink whose connection counts the commands it sends (every ioredis command goes through sendCommand). */
  function countedSink(key: string, store: { recordEncoded(rows: string[]): Promise<number> }, gatherMs: number, blockMs = 5000) {
    const conn = new Redis(redisUrl(), { maxRetriesPerRequest: null });
    const sent: string[] = [];
    const send = conn.sendCommand.bind(conn);
    conn.sendCommand = ((cmd: { name: string }) => (sent.push(cmd.name), send(cmd as never))) as typeof conn.sendCommand;
    const sink = createRunSink({ redis: conn, key, group: usageSinkGroup, consumer: `c-${randomUUID().slice(0, 8)}`, store, claimIdleMs: CLAIM_IDLE_MS, blockMs, gatherMs, logger });
    return { sink, sent };
  }

  /**
   * Takes the sink's next ride. A sink offers one only when it wants its next batch (an idle one blocks in its
   * read): rows appended without a ride wake it until it does.
   */
  async function takeRide(sink: ReturnType<typeof createRunSink>, plain: ReturnType<typeof createRunAppender>, org: string) {
    let woken = 0;
    return until('a ride to take', async () => {
      const ride = sink.rider.take();
      if (ride) return ride;
      await plain.record(run(org, `wake-${org}-${woken++}`));
      return false;
    });
  }

  it("under load the sink's acknowledgements and reads ride on the appends: no round trip of its own per batch", async () => {
    const key = usageStreamKey(randomPrefix());
    const org = randomOrg();
    const store = createRunStore({ pool });
    let batches = 0;
    const { sink, sent } = countedSink(key, { recordEncoded: (r) => (batches++, store.recordEncoded(r)) }, 20);
    const appender = createRunAppender({ redis, key, rider: sink.rider });
    sink.start();
    // Blocked in its first read of new entries: the sink's start-up calls are behind it.
    await until('the sink to block', () => sent.includes('xreadgroup') && sent.filter((c) => c === 'xreadgroup').length >= 2);
    const before = sent.length;
    const ids: string[] = [];
    // Appended one after another, as a worker completing jobs does: some append is always in flight. Until
    // the sink has committed 3 batches meanwhile, however slow this machine's Postgres is right now (at least
    // 600 rows: a busy machine committed 2 batches in 600).
    for (let i = 0; i < 600 || (batches < 3 && i < 20_000); i++) {
      ids.push(`ride-${org}-${i}`);
      await appender.record(run(org, ids[i]));
    }
    const during = sent.slice(before);
    const batchesDuring = batches;
    await until('every row written', async () => (await rowsOf(ids)).length === ids.length);
    await until('stream drained (the last acknowledgement is the sink\'s own call)', async () => (await redis.xlen(key)) === 0);
    await sink.close();
    // Without rides every batch after the first costs the sink one call (acknowledge + read next).
    expect(batchesDuring).toBeGreaterThanOrEqual(3);
    expect(during.filter((c) => c === 'evalsha' || c === 'eval' || c === 'xreadgroup').length).toBeLessThanOrEqual(2);
    expect((await redis.xpending(key, usageSinkGroup))[0]).toBe(0);
    console.log(`[figure] usage sink under ${ids.length} sequential appends: ${batchesDuring} batches committed, ${during.length} calls of its own (${during.join(' ') || 'none'})`);
  }, waitsTimeout(POLL.timeout, POLL.timeout, POLL.timeout));

  it("a lone batch's acknowledgement (no append carried it) reads nothing in its call: the blocking read after it does", async () => {
    const key = usageStreamKey(randomPrefix());
    const org = randomOrg();
    const { sink, sent } = countedSink(key, createRunStore({ pool }), 20);
    sink.start();
    await until('the sink to block', () => sent.filter((c) => c === 'xreadgroup').length >= 2);
    const seen: string[] = [];
    const monitor = await monitorRedis(redisUrl(), (line) => {
      if (line.includes(key)) seen.push(line);
    });
    const before = sent.length;
    const id = `lone-${org}`;
    // One row, as a throttled org's job appends it: its append ends the blocked read, nothing else comes.
    await createRunAppender({ redis, key }).record(run(org, id));
    await until('the row acknowledged', async () => (await redis.xlen(key)) === 0);
    // Blocked again: the acknowledgement's call came before this read.
    await until('the sink to block again', () => sent.slice(before).includes('xreadgroup'));
    await sink.close();
    monitor.close();
    expect(await rowsOf([id])).toHaveLength(1);
    expect((await redis.xpending(key, usageSinkGroup))[0]).toBe(0);
    // Its own calls: the read that took the row, the acknowledgement (XACK, XDEL, XLEN in the script), the next
    // blocking read. The script read nothing: that read found nothing and cost an XREADGROUP each batch.
    expect(sent.slice(before).filter((c) => c !== 'xautoclaim').slice(0, 2)).toEqual(['evalsha', 'xreadgroup']);
    const inScript = seen.filter((l) => l.includes('[0 lua]')).map((l) => /\] "(\w+)"/.exec(l)?.[1]);
    expect(inScript).toEqual(['XACK', 'XDEL', 'XLEN']);
  }, waitsTimeout(POLL.timeout, POLL.timeout, POLL.timeout));

  it("rows appended without a ride (an L1 hit's, in its claim) are read by the sink's own XREADGROUP, never inside its acknowledgement's script", async () => {
    const key = usageStreamKey(randomPrefix());
    const org = randomOrg();
    let batches = 0;
    const store = createRunStore({ pool });
    const { sink, sent } = countedSink(key, { recordEncoded: (r) => (batches++, store.recordEncoded(r)) }, 20);
    const ackSha = createHash('sha1').update(readLua('usage-ack-1.lua')).digest('hex');
    // The commands run inside the sink's own acknowledgements (usage-ack-1.lua), told from a ride's by the script.
    const inAck: string[] = [];
    let parent = '';
    const monitor = await monitorRedis(redisUrl(), (line) => {
      if (!line.includes('[0 lua]')) parent = line.includes('"evalsha"') && line.includes(ackSha) ? 'ack' : '';
      else if (parent === 'ack' && line.includes(key)) inAck.push(/\] "(\w+)"/.exec(line)?.[1] ?? line);
    });
    sink.start();
    await until('the sink to block', () => sent.filter((c) => c === 'xreadgroup').length >= 2);
    // Rows one after another, as a worker completing jobs appends them: first with rides (a miss's store carries
    // them), then without (an L1 hit's row is appended by its claim, which carries none), rows still coming while
    // the sink writes: its acknowledgements find more waiting each time.
    const ridden = createRunAppender({ redis, key, rider: sink.rider });
    const plain = createRunAppender({ redis, key });
    const ids: string[] = [];
    for (let i = 0; i < 100; i++) {
      ids.push(`ridden-${org}-${i}`);
      await ridden.record(run(org, ids.at(-1)!));
    }
    const batchesBefore = batches;
    for (let i = 0; i < 300 || (batches < batchesBefore + 4 && i < 20_000); i++) {
      ids.push(`plain-${org}-${i}`);
      await plain.record(run(org, ids.at(-1)!));
    }
    await until('every row written', async () => (await rowsOf(ids)).length === ids.length);
    await until('stream drained', async () => (await redis.xlen(key)) === 0);
    await sink.close();
    monitor.close();
    expect(batches - batchesBefore).toBeGreaterThanOrEqual(4);
    expect((await redis.xpending(key, usageSinkGroup))[0]).toBe(0);
    // Its acknowledgements ran (XACK, XDEL, XLEN) and read nothing: a read in there costs Redis ~20k instructions
    // a row more than its own XREADGROUP (the reply turned into Lua tables and back).
    expect(inAck).toContain('XACK');
    expect(inAck).not.toContain('XREADGROUP');
  }, waitsTimeout(POLL.timeout, POLL.timeout, POLL.timeout));

  it("a ride whose reply was lost loses nothing: what it read is re-read from the sink's history, its acknowledgements sent again", async () => {
    const key = usageStreamKey(randomPrefix());
    const org = randomOrg();
    const { sink } = countedSink(key, createRunStore({ pool }), 20);
    const appender = createRunAppender({ redis, key, rider: sink.rider });
    const plain = createRunAppender({ redis, key });
    const appendScript = defineLua(redis, 'usage-append-1.lua');
    sink.start();
    const ids = Array.from({ length: 100 }, (_, i) => `lost-${org}-${i}`);
    for (const id of ids.slice(0, 50)) await appender.record(run(org, id));
    // The sink's next ride runs (it acknowledges and reads for the sink: what it read is now pending under the
    // sink's name) and its reply is dropped, as when a connection breaks after the command ran.
    const ride = await takeRide(sink, plain, org);
    // Before the ride's read: the takeover's idle time counts from it.
    const rode = Date.now();
    const [read] = (await appendScript([key], [RUN_FIELD, encodeRun(run(org, `rode-${org}`)), ...ride.args])) as [unknown[]];
    expect(read.length).toBeGreaterThan(0);
    sink.rider.done(ride, undefined);
    for (const id of ids.slice(50)) await appender.record(run(org, id));
    await until('every row written', async () => (await rowsOf([...ids, `rode-${org}`])).length === 101);
    // Well before the takeover (XAUTOCLAIM) could find them.
    expect(Date.now() - rode).toBeLessThan(CLAIM_IDLE_MS / 2);
    await until('stream drained', async () => (await redis.xlen(key)) === 0);
    await sink.close();
    expect((await redis.xpending(key, usageSinkGroup))[0]).toBe(0);
  }, waitsTimeout(POLL.timeout, POLL.timeout, POLL.timeout));

  it('a ride whose reply was lost with its connection, the call sent again by ioredis, is a lost ride: its read is read again from the history', async () => {
    const key = usageStreamKey(randomPrefix());
    const org = randomOrg();
    // The production block (1 s), not the 5 s of the other rides' tests: the history is read again once a block
    // ends, and this test waited out the whole block. Still far below the XAUTOCLAIM bound checked below.
    const { sink } = countedSink(key, createRunStore({ pool }), 20, 1000);
    const plain = createRunAppender({ redis, key });
    sink.start();
    const ride = await takeRide(sink, plain, org);
    // An appender on a connection whose replies go missing, then is reset: ioredis sends the append (with the
    // ride) again after the reconnect, and the second run's read finds nothing new.
    const proxy = await freezableProxy(new URL(redisUrl()));
    const conn = new Redis({ host: '127.0.0.1', port: proxy.port, maxRetriesPerRequest: null });
    let given: typeof ride | undefined = ride;
    const appender = createRunAppender({ redis: conn, key, rider: { key, take: () => ((r) => ((given = undefined), r))(given), done: (r, reply) => sink.rider.done(r, reply) } });
    await conn.ping();
    proxy.dropReplies();
    const id = `resent-${org}`;
    const pendingBefore = ((await redis.xpending(key, usageSinkGroup)) as [number])[0];
    // Before the first run's read: the takeover's idle time counts from it.
    const firstRun = Date.now();
    const appended = appender.record(run(org, id));
    await until('the first run read for the sink', async () => ((await redis.xpending(key, usageSinkGroup)) as [number])[0] > pendingBefore);
    proxy.reset();
    await appended;
    // The second run appended the row again and read that copy; the first copy, read by the lost run, is pending
    // under the sink: read again from its history once its own blocking read (1 s here) returns, and acknowledged,
    // long before XAUTOCLAIM would take it.
    await until('the row written', async () => (await rowsOf([id])).length === 1);
    await until('nothing left pending', async () => ((await redis.xpending(key, usageSinkGroup)) as [number])[0] === 0);
    expect(Date.now() - firstRun).toBeLessThan(CLAIM_IDLE_MS / 2);
    await sink.close();
    conn.disconnect();
    proxy.close();
  }, waitsTimeout(POLL.timeout, POLL.timeout, POLL.timeout, POLL.timeout));

  it('a ride that never answers does not stall the sink: it reads on its own after waiting a second', async () => {
    const key = usageStreamKey(randomPrefix());
    const org = randomOrg();
    const { sink, sent } = countedSink(key, createRunStore({ pool }), 20);
    const appender = createRunAppender({ redis, key, rider: sink.rider });
    sink.start();
    await appender.record(run(org, `first-${org}`));
    await until('the first row written', async () => (await rowsOf([`first-${org}`])).length === 1);
    // A ride taken and never handed back, as by a call stuck in a reconnect. An idle sink blocked in its read
    // has nothing to ask of a ride: rows appended without one wake it until there is.
    const plain = createRunAppender({ redis, key });
    const stuck = await takeRide(sink, plain, org);
    const before = sent.length;
    const ids = Array.from({ length: 20 }, (_, i) => `stuck-${org}-${i}`);
    for (const id of ids) await plain.record(run(org, id));
    await until('rows written past the stuck ride', async () => (await rowsOf(ids)).length === 20);
    // Read by its own XREADGROUP (its acknowledgements, its own calls too, read nothing).
    expect(sent.slice(before)).toContain('xreadgroup');
    sink.rider.done(stuck, undefined);
    await until('stream drained', async () => (await redis.xlen(key)) === 0);
    await sink.close();
    expect((await redis.xpending(key, usageSinkGroup))[0]).toBe(0);
  }, waitsTimeout(POLL.timeout, POLL.timeout, POLL.timeout, POLL.timeout));

  it('gathers longer while rows keep coming: after a batch of `busyRows` rows the next read waits `busyGatherMs`, after a small one `gatherMs`', async () => {
    const key = usageStreamKey(randomPrefix());
    const org = randomOrg();
    const store = createRunStore({ pool });
    const batches: Array<{ rows: number; at: number; done: number }> = [];
    const counted = {
      async recordEncoded(rows: string[]) {
        const b = { rows: rows.length, at: performance.now(), done: 0 };
        batches.push(b);
        const n = await store.recordEncoded(rows);
        b.done = performance.now();
        return n;
      },
    };
    const appender = createRunAppender({ redis, key });
    // Ten rows waiting before the sink starts: its first batch is a busy one (>= busyRows).
    const first = Array.from({ length: 10 }, (_, i) => `busy-${org}-${i}`);
    for (const id of first) await appender.record(run(org, id));
    const sink = sinkFor(key, counted, undefined, 200, undefined, { gatherMs: 20, busyGatherMs: 1500, busyRows: 5 });
    sink.start();
    await until('the busy batch written', () => batches.length === 1 && batches[0].done > 0);
    expect(batches[0].rows).toBe(10);
    // One row right after the busy batch: read no sooner than 1500 ms after the busy batch's read began.
    await appender.record(run(org, `small-${org}`));
    await until('the row after the busy batch written', () => batches.length === 2 && batches[1].done > 0);
    expect(batches[1].rows).toBe(1);
    expect(batches[1].at - batches[0].at).toBeGreaterThanOrEqual(1100);
    // After a small batch the pause is `gatherMs` again: a row appended now is written long before 1500 ms.
    const lastAt = performance.now();
    await appender.record(run(org, `after-small-${org}`));
    await until('the row after the small batch written', () => batches.length === 3 && batches[2].done > 0);
    await sink.close();
    expect(batches[2].at - lastAt).toBeLessThan(1000);
    expect(await rowsOf([...first, `small-${org}`, `after-small-${org}`])).toHaveLength(12);
  }, waitsTimeout(POLL.timeout, POLL.timeout, POLL.timeout));

  it('closes at once while Redis is down, its blocked read held by the reconnecting connection (not waited on once disconnected)', async () => {
    const server = await startRedisServer();
    const conn = createRedis(server.url, 'worker');
    const own = new Redis(server.url, { maxRetriesPerRequest: null });
    try {
      const key = usageStreamKey(randomPrefix());
      const sink = createRunSink({ redis: conn, key, group: usageSinkGroup, consumer: 'c-down', store: createRunStore({ pool }), claimIdleMs: CLAIM_IDLE_MS, blockMs: 5000, logger });
      sink.start();
      await until('the sink to block', async () => String(await own.client('LIST')).split('\n').some((c) => c.includes('cmd=xreadgroup') && /flags=\S*b/.test(c)));
      own.disconnect();
      // The read in flight is held for a resend once Redis is back, on a connection that is now reconnecting.
      const reconnecting = once(conn, 'reconnecting');
      await server.stop();
      await within(reconnecting, 10_000, 'the sink connection to reconnect');
      // A hang guard: a close that waited on the held read would never end (Redis stays down).
      await within(sink.close(), 30_000, 'the sink to close with Redis down');
      expect(conn.status).not.toBe('ready');
    } finally {
      own.disconnect();
      conn.disconnect();
      await server.stop();
    }
  }, waitsTimeout(POLL.timeout, 10_000, 30_000));
});
