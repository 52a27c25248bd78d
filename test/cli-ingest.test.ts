import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ingestJsonl, parseIngestArgs, validateJsonl } from '../src/app/cli/ingest.js';
import { migrate } from '../src/shared/infra/db/migrate.js';
import { createPool } from '../src/shared/infra/db/pool.js';
import { JsonlLineError } from '../src/shared/knowledge/jsonl-docs.js';
import { createIngestLedger, createKnowledgeStore } from '../src/shared/knowledge/knowledge-store.js';
import { createHashEmbed } from './helpers/hash-embed.js';
import { Redis } from 'ioredis';
import { shardLayoutKey } from '../src/shared/core/queue-keys.js';
import { databaseUrl, randomOrg, randomPrefix, redisUrl } from './helpers/env.js';
import { runCli } from './helpers/run-cli.js';
import { startOtlpReceiver } from './helpers/otlp-receiver.js';

// Each test starts the CLI as a process (tsx, Postgres): minutes, not seconds, on a busy machine.
describe('ingest CLI', { timeout: 240_000 }, () => {
  let pool: pg.Pool;
  let dir: string;
  const file = (name: string, lines: string[]) => {
    const path = join(dir, name);
    writeFileSync(path, lines.join('\n') + '\n');
    return path;
  };
  // GEMINI_API_KEY unset: the runtime embeds through the in-process Gemini emulator.
  const ingest = (args: string[]) => runCli('src/app/cli/ingest.ts', args, { DATABASE_URL: databaseUrl(), GEMINI_API_KEY: undefined });

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'agentq-ingest-'));
    pool = createPool(databaseUrl(), { max: 2 });
    await migrate(pool);
  });
  afterAll(async () => {
    await pool.end();
    rmSync(dir, { recursive: true, force: true });
  });

  it('ingests a JSONL file into chat_facts for the org, and re-ingesting updates without duplicates', async () => {
    const org = randomOrg();
    const path = file('facts.jsonl', [
      JSON.stringify({ external_id: 'f1', content: 'Revenue grew 40% quarter over quarter', startup_id: 's1' }),
      '',
      JSON.stringify({ external_id: 'f2', content: 'Churn is under 2% monthly', confidence: 0.8 }),
      JSON.stringify({ external_id: 'f3', content: 'The team is hiring two engineers', expires_at: '2099-01-01T00:00:00Z' }),
    ]);
    const first = await ingest([path, '--table', 'chat_facts', '--org', org, '--batch', '2']);
    expect(first.stderr).toContain('100% 3/3');
    expect(first.code).toBe(0);
    expect(first.stdout).toContain('3 documents, 3 inserted, 0 updated');
    // The org's cached answers of the agents that search chat_facts, invalidated as the API's ingest does.
    expect(first.stdout).toContain(`cached answers invalidated (org ${org}): KnowledgeAssistant`);

    const second = await ingest([path, '--table', 'chat_facts', '--org', org]);
    expect(second.code).toBe(0);
    expect(second.stdout).toContain('3 documents, 0 inserted, 3 updated');
    const { rows } = await pool.query(
      'SELECT external_id, startup_id, vector_dims(embedding) AS dims FROM chat_facts WHERE org_id = $1 ORDER BY external_id',
      [org],
    );
    expect(rows).toEqual([
      { external_id: 'f1', startup_id: 's1', dims: 768 },
      { external_id: 'f2', startup_id: null, dims: 768 },
      { external_id: 'f3', startup_id: null, dims: 768 },
    ]);
    // The org paid for embedding its facts: a ledger row per written batch, tokens estimated. A run is one ingest: the
    // first run's 2 batches are rows 1 and 2 of one ingest id, the second run's 1 batch an ingest of its own.
    const ledger = await pool.query("SELECT job_id, attempt, agent, action, kind, embedding_tokens, embedding_estimated FROM agent_runs WHERE org_id = $1 ORDER BY created_at, attempt", [org]);
    const est = (texts: string[]) => texts.reduce((n, t) => n + Math.ceil(t.length / 4), 0);
    const contents = ['Revenue grew 40% quarter over quarter', 'Churn is under 2% monthly', 'The team is hiring two engineers'];
    const row = { agent: 'knowledge', action: 'ingest:chat_facts', kind: 'ingest', embedding_estimated: true };
    const [run1, run2] = [ledger.rows[0]?.job_id, ledger.rows[2]?.job_id];
    expect(run1).not.toBe(run2);
    expect(ledger.rows).toEqual([
      { ...row, job_id: run1, attempt: 1, embedding_tokens: est(contents.slice(0, 2)) },
      { ...row, job_id: run1, attempt: 2, embedding_tokens: est(contents.slice(2)) },
      { ...row, job_id: run2, attempt: 1, embedding_tokens: est(contents) },
    ]);
  });

  it('records a run over several batches as one ingest: one id, a row per batch numbered from 1; a batch written again is recorded once', async () => {
    const org = randomOrg();
    const texts = ['Seed round closed at 3M', 'Two pilots signed in March', 'Gross margin is 71%', 'Burn is 180k a month', 'Runway is 20 months'];
    const path = file('batches.jsonl', texts.map((content, i) => JSON.stringify({ external_id: `b${i}`, content })));
    const store = createKnowledgeStore({ pool, embed: createHashEmbed(), ledger: createIngestLedger('gemini-embedding-001') });
    const args = parseIngestArgs([path, '--table', 'chat_facts', '--org', org, '--batch', '2']);
    const r = await ingestJsonl(args, { store, total: texts.length });
    expect(r).toMatchObject({ total: 5, inserted: 5, batches: 3, ingestId: expect.stringMatching(/^ingest:[0-9a-f-]{36}$/) });
    const ledger = async () =>
      (await pool.query("SELECT job_id, job_ts, attempt, part, embedding_tokens FROM agent_runs WHERE org_id = $1 AND kind = 'ingest' ORDER BY attempt", [org])).rows;
    const est = (batch: string[]) => batch.reduce((n, t) => n + Math.ceil(t.length / 4), 0);
    const rows = [texts.slice(0, 2), texts.slice(2, 4), texts.slice(4)].map((batch, i) => ({ job_id: r.ingestId, job_ts: '0', attempt: i + 1, part: '', embedding_tokens: est(batch) }));
    expect(await ledger()).toEqual(rows);
    // The second batch's statement sent again (a retry of the same run's batch): its documents are upserted, its row kept once.
    await store.upsert('chat_facts', texts.slice(2, 4).map((content, i) => ({ external_id: `b${i + 2}`, content })), { orgId: org, ingest: { id: r.ingestId, firstBatch: 2 } });
    expect(await ledger()).toEqual(rows);
  });

  it('exports its spans over OTLP before it exits: a root span for the run, one embeddings span per batch under it', async () => {
    const receiver = await startOtlpReceiver();
    try {
      const org = randomOrg();
      const texts = ['Seed round closed at 3M', 'Two pilots signed in March', 'Gross margin is 71%', 'Burn is 180k a month', 'Runway is 20 months'];
      const path = file('traced.jsonl', texts.map((content, i) => JSON.stringify({ external_id: `t${i}`, content })));
      const res = await runCli('src/app/cli/ingest.ts', [path, '--table', 'chat_facts', '--org', org, '--batch', '2'], {
        DATABASE_URL: databaseUrl(),
        GEMINI_API_KEY: undefined,
        OTEL_EXPORTER_OTLP_ENDPOINT: receiver.endpoint,
        OTEL_SERVICE_NAME: 'agentq-ingest-test',
      });
      expect(res.code, res.stderr).toBe(0);
      // No wait: the process exited, so whatever it exported was received (the exporter awaits each POST's answer).
      const roots = receiver.spans.filter((s) => s.name === 'ingest chat_facts');
      expect(roots).toHaveLength(1);
      const root = roots[0];
      expect(root.parentSpanId).toBeUndefined();
      expect(root.resource).toMatchObject({ 'service.name': 'agentq-ingest-test', 'agentq.role': 'ingest' });
      const ledger = await pool.query("SELECT DISTINCT job_id FROM agent_runs WHERE org_id = $1 AND kind = 'ingest'", [org]);
      expect(ledger.rows).toHaveLength(1);
      expect(root.attributes).toMatchObject({
        'agentq.ingest.table': 'chat_facts',
        'agentq.org_id': org,
        'agentq.ingest.id': ledger.rows[0].job_id,
        'agentq.ingest.documents': 5,
        'agentq.ingest.batches': 3,
        'agentq.ingest.inserted': 5,
      });
      expect(root.status?.code ?? 0).not.toBe(2);
      const est = (batch: string[]) => batch.reduce((n, t) => n + Math.ceil(t.length / 4), 0);
      const embeds = receiver.spans.filter((s) => s.attributes['gen_ai.operation.name'] === 'embeddings');
      expect(embeds.map((s) => s.attributes['agentq.usage.input_tokens'])).toEqual([texts.slice(0, 2), texts.slice(2, 4), texts.slice(4)].map(est));
      for (const span of embeds) {
        expect(span).toMatchObject({ traceId: root.traceId, parentSpanId: root.spanId, kind: 3 });
        expect(span.attributes).toMatchObject({ 'agentq.embedding.task_type': 'RETRIEVAL_DOCUMENT', 'agentq.usage.estimated': true });
      }
      // The documents' text is never exported.
      expect(receiver.bodies.join('\n')).not.toContain('Runway');

      // A run that fails (a bad line, before anything is loaded) exports its root span too, as an error.
      const bad = file('traced-bad.jsonl', [JSON.stringify({ external_id: 'x', content: 'too sure', confidence: 7 })]);
      const failed = await runCli('src/app/cli/ingest.ts', [bad, '--table', 'chat_facts', '--org', org], { DATABASE_URL: databaseUrl(), GEMINI_API_KEY: undefined, OTEL_EXPORTER_OTLP_ENDPOINT: receiver.endpoint });
      expect(failed.code).toBe(1);
      const failedRoot = receiver.spans.filter((s) => s.name === 'ingest chat_facts' && s.traceId !== root.traceId);
      expect(failedRoot).toHaveLength(1);
      expect(failedRoot[0].status?.code).toBe(2);
      expect(failedRoot[0].attributes['error.type']).toBe('EVALIDATION');
    } finally {
      await receiver.close();
    }
  });

  it('follows the shard layout recorded in Redis: a QUEUE_SHARDS that differs is refused before anything is loaded, naming both counts', async () => {
    const redis = new Redis(redisUrl());
    const prefix = randomPrefix();
    const org = randomOrg();
    try {
      await redis.set(shardLayoutKey(prefix), '4');
      const path = file('sharded.jsonl', [JSON.stringify({ external_id: 's1', content: 'Sharded deployment fact' })]);
      const run = (shards: string | undefined) =>
        runCli('src/app/cli/ingest.ts', [path, '--table', 'chat_facts', '--org', org], { DATABASE_URL: databaseUrl(), REDIS_URL: redisUrl(), GEMINI_API_KEY: undefined, QUEUE_PREFIX: prefix, QUEUE_SHARDS: shards });
      const rowsOfOrg = async () => (await pool.query('SELECT count(*)::int AS n FROM chat_facts WHERE org_id = $1', [org])).rows[0].n;
      const refused = await run('2');
      expect(refused.code).toBe(1);
      expect(refused.stderr).toMatch(/ingest refused, nothing loaded: Invalid environment variable QUEUE_SHARDS=2: the queue under .* is laid out in 4 shard\(s\)/);
      // Refused before the load: no progress, no rows, nothing to invalidate.
      expect(refused.stderr).not.toMatch(/documents\/s|could not be invalidated/);
      expect(refused.stdout).toBe('');
      expect(await rowsOfOrg()).toBe(0);
      const followed = await run(undefined);
      expect(followed.stderr).not.toContain('could not be invalidated');
      expect(followed.code).toBe(0);
      expect(followed.stdout).toContain(`cached answers invalidated (org ${org}): KnowledgeAssistant`);
      expect(await rowsOfOrg()).toBe(1);
    } finally {
      await redis.del(shardLayoutKey(prefix));
      redis.disconnect();
    }
  });

  it('reports the line number and field of an invalid row, exits 1, and writes nothing', async () => {
    const org = randomOrg();
    const path = file('bad.jsonl', [
      JSON.stringify({ external_id: 'ok1', content: 'fine' }),
      JSON.stringify({ external_id: 'ok2', content: 'fine too' }),
      '',
      JSON.stringify({ external_id: 'bad', content: 'too sure', confidence: 7 }),
    ]);
    const res = await ingest([path, '--table', 'chat_facts', '--org', org]);
    expect(res.code).toBe(1);
    expect(res.stderr).toMatch(/line 4: field "confidence"/);
    const { rows } = await pool.query('SELECT count(*)::int AS n FROM chat_facts WHERE org_id = $1', [org]);
    expect(rows[0].n).toBe(0);
  });

  it('names the line of malformed JSON, a missing field, a non-object, or a repeated external_id', async () => {
    const cases: Array<[string[], number, string | undefined]> = [
      [['{"external_id":"a","content":"x"}', '{"external_id": oops}'], 2, undefined],
      [['{"external_id":"a","content":"x"}', '', '{"content":"no id"}'], 3, 'external_id'],
      [['[1,2]'], 1, undefined],
      [['{"external_id":"a","content":"x"}', '{"external_id":"a","content":"y"}'], 2, 'external_id'],
    ];
    for (const [i, [lines, line, field]] of cases.entries()) {
      const err = await validateJsonl(file(`case${i}.jsonl`, lines), 'chat_facts').catch((e) => e);
      expect(err).toBeInstanceOf(JsonlLineError);
      expect(err.line).toBe(line);
      expect(err.field).toBe(field);
      expect(err.message).toMatch(new RegExp(`^line ${line}: `));
    }
    expect(await validateJsonl(file('ok.jsonl', ['{"external_id":"a","industry":"x","display_name":"X"}']), 'industry_packs')).toBe(1);
  });

  it('rejects bad arguments with a usage error (exit 2)', async () => {
    expect(() => parseIngestArgs(['f.jsonl'])).toThrow(/--table/);
    expect(() => parseIngestArgs(['f.jsonl', '--table', 'api_keys'])).toThrow(/--table must be one of/);
    expect(() => parseIngestArgs(['f.jsonl', '--table', 'chat_facts'])).toThrow(/--org is required/);
    expect(() => parseIngestArgs(['--table', 'playbooks'])).toThrow(/exactly one JSONL file/);
    expect(() => parseIngestArgs(['f.jsonl', '--table', 'playbooks', '--batch', '0'])).toThrow(/--batch/);
    // Given but empty (`--org "$ORG"` with ORG unset) would make private playbooks shared; a malformed one no org's.
    expect(() => parseIngestArgs(['f.jsonl', '--table', 'playbooks', '--org', ''])).toThrow(/--org may only contain/);
    expect(() => parseIngestArgs(['f.jsonl', '--table', 'chat_facts', '--org', 'not an org!'])).toThrow(/--org may only contain/);
    expect(parseIngestArgs(['f.jsonl', '--table', 'playbooks'])).toEqual({ file: 'f.jsonl', table: 'playbooks', orgId: undefined, batchSize: 100 });
    const res = await ingest(['--table', 'nope']);
    expect(res.code).toBe(2);
    expect(res.stderr).toContain('usage: npm run ingest');
  });
});
