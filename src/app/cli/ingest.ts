import { parseArgs } from 'node:util';
import type { Pool } from 'pg';
import { assertGeminiConfigured, config, type Config } from '../../shared/core/config.js';
import { createResultCache } from '../../shared/cache/result-cache.js';
import { createSemanticCache } from '../../shared/cache/semantic-cache.js';
import { defaultRegistry } from '../../shared/agents/registry.js';
import { agentqPrefix } from '../../shared/core/queue-keys.js';
import { queueShards } from '../../shared/core/queue-shards.js';
import { ORG_ID } from '../../shared/fair/org-plan-schema.js';
import { createRedis, redisTargetOf, whenReady, type RedisClient } from '../../shared/infra/redis/connection.js';
import { createReaderInvalidation, shardedResults } from '../../shared/knowledge/reader-invalidation.js';
import { migrate } from '../../shared/infra/db/migrate.js';
import { dbTimeoutsOf } from '../../shared/infra/db/pool.js';
import { openSharedDatabase } from '../../shared/infra/db/shared-embedded.js';
import { AgentqError } from '../../shared/core/errors.js';
import { geminiOptionsFromConfig, startGemini } from '../gemini.js';
import type { EmbedFn } from '../../shared/knowledge/embedding.js';
import { readJsonlDocs } from '../../shared/knowledge/jsonl-docs.js';
import { isKnowledgeTable, KNOWLEDGE_TABLES, type KnowledgeDoc, type KnowledgeTable } from '../../shared/knowledge/knowledge-schemas.js';
import { createIngestLedger, createKnowledgeStore, newIngestId, type KnowledgeStore, type UpsertResult } from '../../shared/knowledge/knowledge-store.js';
import { createTenantIndex, withHnswRebuild, type IndexPhase } from '../../shared/knowledge/hnsw-rebuild.js';
import { followShardLayout } from '../../shared/queue/shard-layout.js';
import type { Logger } from '../../shared/core/logger.js';
import { inSpan, markError, type Span } from '../../shared/telemetry/tracing.js';
import { startTracing } from '../tracing.js';
import { createCliLogger, runCliIfMain, shardsGiven } from './run-cli.js';

const USAGE = `usage: npm run ingest -- FILE.jsonl --table ${KNOWLEDGE_TABLES.join('|')} [--org ORG] [--batch N] [--rebuild-index] [--tenant-index]
  chat_facts need --org; playbooks with --org are private to that org, without it global.
  --rebuild-index drops the table's HNSW index (and the org's own, if it has one) for the load and rebuilds
  it once at the end (bulk loads; similarity lookups fall back to exact scans meanwhile), with
  maintenance_work_mem = INDEX_BUILD_MEMORY.
  --tenant-index (chat_facts) builds ORG's own HNSW index after the load if it has none: a partial index that
  match_documents walks for ORG instead of the shared one (for large tenants: README "Vectors at scale").`;

export class UsageError extends AgentqError {
  constructor(message: string) {
    super(message, 'EUSAGE');
  }
}

export interface IngestArgs {
  file: string;
  table: KnowledgeTable;
  orgId?: string;
  batchSize: number;
  /** Drop the HNSW index for the load and build it once afterwards. */
  rebuildIndex?: boolean;
  /** Build the org's own HNSW index (migration 015) after the load. */
  tenantIndex?: boolean;
}

export function parseIngestArgs(argv: string[]): IngestArgs {
  let parsed;
  try {
    parsed = parseArgs({
      args: argv,
      allowPositionals: true,
      options: {
        table: { type: 'string' },
        org: { type: 'string' },
        batch: { type: 'string' },
        'rebuild-index': { type: 'boolean' },
        'tenant-index': { type: 'boolean' },
      },
    });
  } catch (err) {
    throw new UsageError((err as Error).message);
  }
  const { values, positionals } = parsed;
  if (positionals.length !== 1) throw new UsageError('expected exactly one JSONL file');
  if (!values.table || !isKnowledgeTable(values.table)) throw new UsageError(`--table must be one of ${KNOWLEDGE_TABLES.join(', ')}`);
  // Given but empty (`--org "$ORG"` with ORG unset) is not "no org": for playbooks that would make private rows shared.
  if (values.org !== undefined && !ORG_ID.test(values.org)) throw new UsageError('--org may only contain letters, digits and _ . : - (max 128)');
  if (values.table === 'chat_facts' && !values.org) throw new UsageError('--org is required for chat_facts');
  if (values['tenant-index'] && values.table !== 'chat_facts') throw new UsageError('--tenant-index is for chat_facts (a tenant\'s own index of its facts)');
  const batchSize = values.batch === undefined ? 100 : Number(values.batch);
  if (!Number.isInteger(batchSize) || batchSize < 1 || batchSize > 1000) throw new UsageError('--batch must be an integer 1..1000');
  return {
    file: positionals[0],
    table: values.table,
    orgId: values.org || undefined,
    batchSize,
    ...(values['rebuild-index'] ? { rebuildIndex: true } : {}),
    ...(values['tenant-index'] ? { tenantIndex: true } : {}),
  };
}

/** Reads the whole file once to validate it: a bad line is reported before anything is written. */
export async function validateJsonl(file: string, table: KnowledgeTable): Promise<number> {
  let count = 0;
  for await (const _ of readJsonlDocs(file, table)) count++;
  return count;
}

/** What a run loaded, and the ingest its ledger rows are recorded under (`job_id` of its batches' rows). */
export interface IngestJsonlResult extends UpsertResult {
  ingestId: string;
  batches: number;
}

/**
 * Second pass: streams the (now known good) file into the knowledge store batch by batch. The run is one ingest, as
 * an API request is: its batches are rows 1, 2, ... of one ingest id in the org's ledger, not an ingest each.
 */
export async function ingestJsonl(
  args: IngestArgs,
  deps: { store: KnowledgeStore; total: number; onProgress?: (done: number, total: number) => void; ingestId?: string },
): Promise<IngestJsonlResult> {
  const sum: IngestJsonlResult = { inserted: 0, updated: 0, skipped: 0, total: 0, ingestId: deps.ingestId ?? newIngestId(), batches: 0 };
  let batch: KnowledgeDoc[] = [];
  const flush = async () => {
    const r = await deps.store.upsert(args.table, batch, { orgId: args.orgId, batchSize: args.batchSize, ingest: { id: sum.ingestId, firstBatch: sum.batches + 1 } });
    sum.inserted += r.inserted;
    sum.updated += r.updated;
    sum.skipped += r.skipped;
    sum.total += r.total;
    // One batch per call (the batch is never above batchSize), counted as the store numbers them all the same.
    sum.batches += Math.ceil(batch.length / args.batchSize);
    batch = [];
    deps.onProgress?.(sum.total, deps.total);
  };
  for await (const { doc } of readJsonlDocs(args.file, args.table)) {
    batch.push(doc);
    if (batch.length >= args.batchSize) await flush();
  }
  if (batch.length) await flush();
  return sum;
}

/** A progress bar with the load rate since `startedAt` (documents/s, embedding and writing together). */
export function progressBar(startedAt = performance.now()) {
  return (done: number, total: number) => {
    const width = 30;
    const ratio = total ? done / total : 1;
    const filled = Math.round(ratio * width);
    const s = (performance.now() - startedAt) / 1000;
    const rate = s > 0 ? Math.round(done / s) : 0;
    process.stderr.write(`\r[${'#'.repeat(filled)}${'-'.repeat(width - filled)}] ${String(Math.round(ratio * 100)).padStart(3)}% ${done}/${total} ${rate} documents/s`);
  };
}

/** One line per index phase, so a long HNSW build is visibly a build and not a hang. */
export function describePhase(p: IndexPhase): string {
  if (p.phase === 'drop') return `index: dropped ${p.index} for the bulk load\n`;
  if (p.phase === 'build') return `index: building ${p.index} (HNSW, maintenance_work_mem ${p.memory})...\n`;
  return `index: built ${p.index} in ${(p.ms / 1000).toFixed(1)} s\n`;
}

/**
 * The shard layout the cached answers are found through, checked before anything is loaded: a QUEUE_SHARDS that
 * differs from the recorded one (or a Redis that cannot be reached) would only show after the load, as answers
 * cached before the new rows that could not be invalidated. The layout is read again for the invalidation itself.
 */
async function checkShardLayout(cfg: Config, redis: RedisClient): Promise<void> {
  await whenReady(redis);
  await followShardLayout({ redis, prefix: cfg.QUEUE_PREFIX, shards: shardsGiven(cfg) });
}

/**
 * After the load, as the API's ingest does (reader-invalidation.ts): the cached answers of the agents whose prompts
 * search the table, in the org or (shared rows) in every org, through each queue shard's result cache.
 */
async function invalidateReaders(cfg: Config, redis: RedisClient, pool: Pool, embed: EmbedFn, table: KnowledgeTable, orgId: string | undefined): Promise<string[]> {
  await whenReady(redis);
  const shards = queueShards(cfg.QUEUE_PREFIX, await followShardLayout({ redis, prefix: cfg.QUEUE_PREFIX, shards: shardsGiven(cfg) }));
  const caches = shards.prefixes.map((prefix) => createResultCache({ redis, prefix: agentqPrefix(prefix), l1Max: 1, l1TtlMs: 1, l2TtlS: cfg.CACHE_TTL_S }));
  const afterIngest = createReaderInvalidation({
    readersOf: (t) => defaultRegistry().readersOf(t),
    results: shardedResults(caches, shards.ofOrg),
    semantic: createSemanticCache({ pool, embed, ttlS: cfg.SEMANTIC_CACHE_TTL_S }),
  });
  return afterIngest(table, orgId);
}

async function main(argv: string[]): Promise<number> {
  let args: IngestArgs;
  try {
    args = parseIngestArgs(argv);
  } catch (err) {
    process.stderr.write(`${(err as Error).message}\n${USAGE}\n`);
    return 2;
  }
  const cfg = config();
  // Documents embedded by the emulator would be found by nothing a real model embeds: refused before any work.
  assertGeminiConfigured(cfg);
  const logger = createCliLogger(cfg);
  // As the API and worker processes do: an OTLP exporter when OTEL_* name an endpoint, else no SDK (no-op spans).
  const tracing = startTracing(cfg, logger, { role: 'ingest' });
  try {
    // The run's root span: each batch's embedding requests (llm-client.ts) are its children.
    const attributes = { 'agentq.ingest.table': args.table, 'agentq.ingest.batch_size': args.batchSize, ...(args.orgId ? { 'agentq.org_id': args.orgId } : {}) };
    return await inSpan(`ingest ${args.table}`, { attributes }, (span) => run(args, cfg, logger, span));
  } finally {
    // runCliIfMain exits as soon as main returns: the batch processor's buffered spans are exported first.
    await tracing?.shutdown();
  }
}

/** The run under its root span: a failure is written to stderr as an exit code, and marks the span as an error. */
async function run(args: IngestArgs, cfg: Config, logger: Logger, span: Span): Promise<number> {
  const fail = (err: unknown, message: string) => {
    if (span.isRecording()) markError(span, err);
    process.stderr.write(message);
    return 1;
  };
  let total: number;
  try {
    total = await validateJsonl(args.file, args.table);
  } catch (err) {
    return fail(err, `${args.file}: ${(err as Error).message}\n`);
  }
  span.setAttribute('agentq.ingest.documents', total);
  const redis = createRedis(redisTargetOf(cfg), 'api', { commandTimeout: cfg.REDIS_COMMAND_TIMEOUT_MS });
  try {
    await checkShardLayout(cfg, redis);
  } catch (err) {
    redis.disconnect();
    return fail(err, `ingest refused, nothing loaded: ${(err as Error).message}\n`);
  }
  const db = await openSharedDatabase({ databaseUrl: cfg.DATABASE_URL, dataDir: cfg.DATA_DIR, pglitePort: cfg.PGLITE_PORT, pgliteSharedBuffers: cfg.PGLITE_SHARED_BUFFERS, pglitePrewarm: false, logger, timeouts: dbTimeoutsOf(cfg) });
  let runtime: Awaited<ReturnType<typeof startGemini>> | undefined;
  try {
    await migrate(db.longPool, { logger });
    runtime = await startGemini(geminiOptionsFromConfig(cfg, logger));
    const embed: EmbedFn = (texts) => runtime!.llm.embed(texts, { taskType: 'RETRIEVAL_DOCUMENT' });
    // --org: the org's rows record what embedding them cost in its ledger, as the API's ingest does.
    const store = createKnowledgeStore({ pool: db.pool, embed, ledger: createIngestLedger(cfg.GEMINI_EMBEDDING_MODEL, cfg.PRICES_JSON) });
    // Known before the load: a run that fails half-way names the ingest its written batches are recorded under.
    const ingestId = newIngestId();
    span.setAttribute('agentq.ingest.id', ingestId);
    const bar = progressBar();
    bar(0, total);
    const load = () => ingestJsonl(args, { store, total, onProgress: bar, ingestId });
    const onPhase = (p: IndexPhase) => {
      span.addEvent(`agentq.index.${p.phase}`, { 'agentq.index.name': p.index, ...(p.phase === 'built' ? { 'agentq.index.build_ms': Math.round(p.ms) } : {}) });
      process.stderr.write(`${p.phase === 'build' ? '\n' : ''}${describePhase(p)}`);
    };
    const r = args.rebuildIndex ? await withHnswRebuild(db.longPool, args.table, { memory: cfg.INDEX_BUILD_MEMORY, orgId: args.orgId, onPhase }, load) : await load();
    span.setAttributes({ 'agentq.ingest.batches': r.batches, 'agentq.ingest.inserted': r.inserted, 'agentq.ingest.updated': r.updated });
    if (args.tenantIndex && args.orgId) await createTenantIndex(db.longPool, args.table, args.orgId, { memory: cfg.INDEX_BUILD_MEMORY, onPhase });
    process.stderr.write('\n');
    process.stdout.write(`${args.table}: ${r.total} documents, ${r.inserted} inserted, ${r.updated} updated, ${r.skipped} skipped\n`);
    try {
      const agents = await invalidateReaders(cfg, redis, db.pool, embed, args.table, args.orgId);
      if (agents.length) process.stdout.write(`cached answers invalidated (${args.orgId ? `org ${args.orgId}` : 'every org'}): ${agents.join(', ')}\n`);
    } catch (err) {
      // The rows are in: only the answers cached before them may still be served, until CACHE_TTL_S.
      return fail(err, `ingested, but the cached answers of the agents that search ${args.table} could not be invalidated: ${(err as Error).message} (DELETE /v1/cache, or wait CACHE_TTL_S)\n`);
    }
    return 0;
  } catch (err) {
    return fail(err, `\ningest failed: ${(err as Error).message}\n`);
  } finally {
    redis.disconnect();
    await runtime?.close();
    await db.close();
  }
}

runCliIfMain(import.meta.url, main);
