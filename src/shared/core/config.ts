import { z } from 'zod';

/**
 * A variable set to '' (or blanks) is unset: compose's `${VAR:-}`, a Helm value left empty and a .env `KEY=`
 * all pass '', and every variable here reads it as if it were absent (its default, or none). Read as a value,
 * it was worse than absent: a plain coercion made 0 of it (Number('') === 0: PORT='' served on a random port,
 * KEEP_FAILED_COUNT='' kept no failed job, ORG_RPM_PRO='' lifted the limit), and a text variable kept it
 * (GEMINI_MODEL_FAST=' ' named no model, DATA_DIR='' wrote into the working directory, GOOGLE_API_KEY=' '
 * was sent as the key instead of GEMINI_API_KEY's). A value's surrounding blanks go too (a .env `KEY= value`, a
 * pasted key's newline): kept, QUEUE_PREFIX=' {agentq}' split the queue from the processes that read it unpadded,
 * and a padded key or model name was sent as it was and refused by Gemini.
 */
const unsetIfBlank = (v: unknown) => (typeof v === 'string' ? v.trim() || undefined : v);
/** A variable given a value: set and not blank (blank reads as unset, as the schema reads it). */
export const isGiven = (v: string | undefined): v is string => unsetIfBlank(v) !== undefined;
/** Any variable's schema: blank is unset, so `schema`'s default applies (or, for an optional one, none). */
const unlessBlank = <T extends z.ZodType>(schema: T) => z.preprocess(unsetIfBlank, schema);
const boolValue = z.enum(['true', 'false', '1', '0', 'yes', 'no']).transform((v) => v === 'true' || v === '1' || v === 'yes');
const bool = (def: boolean) => unlessBlank(boolValue.default(def));
/** Unset or blank: undefined (the caller resolves it from other variables). */
const maybeBool = unlessBlank(boolValue.optional());
/**
 * A number within `schema`'s bounds, written as people write one in a config: decimal digits (a fraction only
 * where `schema` takes one), blanks around them trimmed; unset or blank: `def`. A coercion (Number()) also took
 * `0x50`, `0b1010`, `1e3` and `80.0` for PORT.
 */
const num = (schema: z.ZodNumber, def: number) => {
  const whole = schema.isInt;
  const form = whole ? /^-?\d+$/ : /^-?(\d+(\.\d*)?|\.\d+)$/;
  const expected = `expected ${whole ? 'a whole number' : 'a number'} in plain decimal digits, e.g. ${def}`;
  return unlessBlank(z.string().trim().regex(form, expected).transform(Number).pipe(schema).default(def));
};
const int = (def: number, min = 0) => num(z.number().int().min(min), def);
/** A JSON-valued variable, validated by `schema`; a parse error names the variable like any other. */
const json = <T extends z.ZodType>(schema: T, def: z.input<T>) =>
  unlessBlank(
    z
      .string()
      .optional()
      .transform((raw, ctx) => {
        if (raw === undefined) return def as unknown;
        try {
          return JSON.parse(raw) as unknown;
        } catch {
          ctx.addIssue({ code: 'custom', message: 'not valid JSON' });
          return z.NEVER;
        }
      })
      .pipe(schema),
  );

const routeSchema = z
  .object({
    primary: z.string().min(1),
    fallback: z.string().min(1).optional(),
    timeoutMs: z.number().int().positive().optional(),
    retries: z.number().int().min(0).max(10).optional(),
  })
  .strict();

const usdPerMillion = z.number().min(0).max(10_000);
const modelPrice = z
  .object({
    input: usdPerMillion.optional(),
    output: usdPerMillion.optional(),
    cachedInput: usdPerMillion.optional(),
    longContext: z.object({ aboveInputTokens: z.number().int().positive(), input: usdPerMillion, output: usdPerMillion, cachedInput: usdPerMillion.optional() }).strict().optional(),
  })
  .strict();
/** PRICES_JSON: replaces entries of the built-in price table (src/shared/infra/llm/pricing.ts) one by one. */
export const priceOverridesSchema = z
  .object({
    asOf: z.string().min(1).max(40).optional(),
    source: z.string().min(1).max(500).optional(),
    models: z.record(z.string().min(1), modelPrice).optional(),
    tiers: z.object({ standard: z.number().positive().max(10), flex: z.number().positive().max(10), batch: z.number().positive().max(10), priority: z.number().positive().max(10) }).partial().strict().optional(),
  })
  .strict();
export type PriceOverrides = z.infer<typeof priceOverridesSchema>;

/** DATABASE_URL's value that asks for the embedded PGlite by name (production refuses an unset one). */
export const EMBEDDED_DATABASE = 'embedded';
const DEFAULT_REDIS_URL = 'redis://127.0.0.1:6379';

/** Unset or blank: undefined. */
const optionalString = unlessBlank(z.string().optional());

/** An http(s) URL (the OTLP exporter's); anything else would only fail at the first export, silently. */
const httpUrl = unlessBlank(
  z
    .string()
    .refine((v) => URL.canParse(v) && /^https?:$/.test(new URL(v).protocol), 'expected an http:// or https:// URL, e.g. http://collector:4318')
    .optional(),
);

/**
 * Every environment variable agentq reads. `.env.example` lists the same names with their defaults;
 * keep the two in step.
 */
export const configSchema = z.object({
  NODE_ENV: unlessBlank(z.enum(['development', 'production', 'test']).default('development')),
  LOG_LEVEL: unlessBlank(z.enum(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']).default('info')),
  /** auto: pretty when stdout is a terminal in development, JSON otherwise (pipes, files, containers, production). */
  LOG_FORMAT: unlessBlank(z.enum(['auto', 'json', 'pretty']).default('auto')),

  // Blank is unset (127.0.0.1): '' would make the server listen on every interface.
  HOST: unlessBlank(z.string().default('127.0.0.1')),
  PORT: num(z.number().int().min(1).max(65535), 3000),
  BODY_LIMIT_BYTES: int(1024 * 1024, 1),
  ADMIN_TOKEN: optionalString,
  AUTH_CACHE_TTL_MS: int(5000),
  LONG_POLL_MAX_MS: int(60_000, 0),
  /** An enqueue that takes longer (Redis slow or gone) answers 503 with Retry-After instead of hanging. */
  ENQUEUE_DEADLINE_MS: int(5000, 100),
  BULL_BOARD_READ_ONLY: bool(false),

  /**
   * Unset: redis://127.0.0.1:6379 (parseConfig), except with NODE_ENV=production, where it must be given (or
   * REDIS_CLUSTER_NODES): a deployment that forgot it would otherwise look for Redis on its own loopback.
   */
  REDIS_URL: unlessBlank(z.string().url().optional()),
  /**
   * Start a local redis-server child when nothing answers at a loopback REDIS_URL. Unset: on, except with
   * NODE_ENV=production, where a Redis slow to answer at start (loading its AOF, restarting) must stop
   * start-up, not be replaced by an empty one of agentq's on its port.
   */
  REDIS_AUTOSTART: maybeBool,
  /**
   * How long a request path (API, direct producer, CLIs) waits for one Redis reply before failing (503).
   * Workers and blocking readers never time out: they wait out an outage.
   */
  REDIS_COMMAND_TIMEOUT_MS: int(2000, 100),
  /**
   * Redis Cluster seed nodes (`host:port,host:port,...`). Set, every connection (BullMQ's included) is an
   * ioredis Cluster and REDIS_URL only lends its password/TLS scheme; autostart is off.
   */
  REDIS_CLUSTER_NODES: unlessBlank(
    z
      .string()
      .regex(/^[^\s,:]+:\d{1,5}(,[^\s,:]+:\d{1,5})*$/, 'expected host:port[,host:port...]')
      .transform((v) => v.split(',').map((hp) => ({ host: hp.slice(0, hp.lastIndexOf(':')), port: Number(hp.slice(hp.lastIndexOf(':') + 1)) })))
      .optional(),
  ),
  REDIS_PASSWORD: optionalString,
  REDIS_TLS: bool(false),
  /** Cluster only: announced node address -> reachable address, e.g. `{"10.0.0.5:6379":{"host":"localhost","port":7000}}`. */
  REDIS_NAT_MAP: json(z.record(z.string(), z.object({ host: z.string().min(1), port: z.number().int().min(1).max(65535) }).strict()).optional(), undefined),
  QUEUE_PREFIX: unlessBlank(z.string().default('{agentq}')),
  /**
   * Queue shards (write scale-out on a Redis Cluster): orgs spread over this many copies of the queue, each
   * under its own hash tag derived from QUEUE_PREFIX's (shared/core/queue-shards.ts). 1 = one keyspace.
   * Changing it on a live system strands what the old layout holds: see the README's "Scaling out".
   */
  QUEUE_SHARDS: num(z.number().int().min(1).max(256), 1),
  DATA_DIR: unlessBlank(z.string().default('.data')),

  /**
   * Postgres, or `embedded` (the same as unset outside production): the embedded PGlite under DATA_DIR. With
   * NODE_ENV=production it must be given: a deployment that forgot it would otherwise run on a local embedded
   * database, its data in the container, quietly apart from the Postgres its other processes use.
   */
  DATABASE_URL: unlessBlank(
    z
      .string()
      .refine((v) => v === EMBEDDED_DATABASE || z.string().url().safeParse(v).success, `expected a URL, e.g. postgres://user:password@host:5432/agentq, or ${EMBEDDED_DATABASE}`)
      .optional(),
  ),
  /**
   * A new Postgres connection (TCP, TLS, startup, authentication) fails after this long, and so does a wait for a
   * free one while the pool is full: a server that takes the TCP connection and never answers is an error, not a
   * hang (the API answers 503, a worker's attempt waits without using an attempt: DB_UNAVAILABLE_DELAY_MS).
   */
  PG_CONNECT_TIMEOUT_MS: int(10_000, 100),
  /**
   * The longest one pooled query waits for its answer: the client then gives up and drops the connection (a
   * server that hangs or is cut off answers nothing). Migrations and HNSW index builds run on a connection of
   * their own, without it: they take as long as they take.
   */
  PG_QUERY_TIMEOUT_MS: int(30_000, 100),
  /**
   * Real Postgres: the pool's connections also ask the server to cancel a statement a little before
   * PG_QUERY_TIMEOUT_MS (`statement_timeout`, sent at connect), so a slow statement stops using the server then
   * (a client that gives up only drops its connection; the backend runs on). `false` behind a pooler that refuses startup parameters (PgBouncer unless its
   * `ignore_startup_parameters` lists statement_timeout). Never sent to the embedded PGlite, which ignores it.
   */
  PG_STATEMENT_TIMEOUT: bool(true),
  PGLITE_PORT: int(0),
  /**
   * Embedded PGlite only: its shared_buffers (PGlite's default 128MB). Size it to hold the vector indexes that
   * must answer fast from the first query: an org's own HNSW index over 100k entries is ~391 MB.
   */
  PGLITE_SHARED_BUFFERS: unlessBlank(z.string().regex(/^[1-9][0-9]*(kB|MB|GB)$/, 'a size like 512MB or 1GB').optional()),
  /** Embedded PGlite only: read the HNSW indexes that fit (3/4 of shared_buffers, orgs' own first) into memory at start. */
  PGLITE_PREWARM: bool(true),

  GEMINI_API_KEY: optionalString,
  /** The SDK's own key variable; with both set the SDK (and so agentq) uses this one. */
  GOOGLE_API_KEY: optionalString,
  /**
   * Whether the built-in emulator may answer when neither key is set (a key never starts it). Unset: yes,
   * except with NODE_ENV=production, where a missing key refuses start (assertGeminiConfigured): synthetic
   * answers would be cached (result and semantic caches) and served after a key is set.
   */
  GEMINI_EMULATOR: maybeBool,
  /**
   * The SDK's switches to Vertex AI, read here only to refuse them: agentq speaks the Gemini API (its batch tier
   * sends inline requests, which Vertex batch prediction does not take; its embeddings and prices are the
   * Gemini API's), and a Vertex setup silently served by the emulator would be worse than no start.
   */
  GOOGLE_GENAI_USE_VERTEXAI: optionalString,
  GOOGLE_GENAI_USE_ENTERPRISE: optionalString,
  GEMINI_MODEL_FAST: unlessBlank(z.string().default('gemini-2.5-flash')),
  GEMINI_MODEL_PRO: unlessBlank(z.string().default('gemini-2.5-pro')),
  GEMINI_EMBEDDING_MODEL: unlessBlank(z.string().default('gemini-embedding-001')),
  /** Extra models callers may name in `options.model`, comma-separated (besides the tiers, routes and MODEL_LIMITS). */
  ALLOWED_MODELS: unlessBlank(
    z
      .string()
      .default('')
      .transform((v) => v.split(',').map((m) => m.trim()).filter(Boolean)),
  ),
  LLM_TIMEOUT_MS: int(60_000, 1),
  /**
   * How the SDK's requests travel: `fetch` (its default, the global fetch) or `node-http` (keep-alive node:http(s)
   * agents through the SDK's `httpOptions.fetch`: less garbage per call, a shorter latency tail; infra/llm/node-http-fetch.ts).
   */
  LLM_HTTP_TRANSPORT: unlessBlank(z.enum(['fetch', 'node-http']).default('fetch')),
  /** Price table overrides (USD per 1M tokens, tier multipliers), e.g. {"asOf":"2026-01-10","models":{"gemini-2.5-flash":{"input":0.3}},"tiers":{"priority":2}}. */
  PRICES_JSON: json(priceOverridesSchema, {}),
  /** A job's `options.deadline` at least this many seconds away runs on the flex tier (about half price, best effort). */
  TIER_FLEX_MIN_DEADLINE_S: int(600, 1),
  /** A deadline at least this many seconds away runs on the batch tier (Gemini Batch Mode: half price, target turnaround 24 h). */
  TIER_BATCH_MIN_DEADLINE_S: int(86_400, 1),
  /** Batch tier: pending requests of one model are submitted as one batch once this many wait... */
  BATCH_MAX_REQUESTS: int(1000, 1),
  /** ...or once the oldest has waited this long. */
  BATCH_MAX_AGE_MS: int(60_000, 1),
  /** How often the batch collector submits due requests and polls submitted batches. */
  BATCH_POLL_MS: int(30_000, 10),
  /**
   * A collector run holds a Redis lock this long at most: a process killed mid-run blocks the others' runs
   * until it lapses. Must exceed one run (a run outliving its lock could create a batch twice).
   */
  BATCH_LOCK_MS: int(60_000, 100),
  /** A job whose batch still runs this close to its deadline runs on the standard tier (the batch is cancelled once none of its jobs waits). */
  BATCH_DEADLINE_MARGIN_MS: int(600_000, 1),
  /**
   * The least time a batch gets before that margin: an explicit batch-tier job whose deadline is nearer than
   * BATCH_DEADLINE_MARGIN_MS + this is refused (400 naming options.deadline), and a deadline is never given the
   * batch tier below it.
   */
  BATCH_MIN_TURNAROUND_S: int(3600, 0),

  WORKER_CONCURRENCY: int(10, 1),
  /**
   * ioredis auto-pipelining on a worker's command connections (guards, fair dispatcher, usage rows): `auto` turns
   * it on from 16 concurrent jobs, where commands of several jobs share a tick and leave in one write; below,
   * it would cost each command a pipeline of its own and a deferred write (infra/redis/connection.ts).
   */
  REDIS_AUTO_PIPELINING: unlessBlank(z.enum(['auto', 'on', 'off']).default('auto')),
  /** Flow parents and pipeline runs mostly wait on their children, so this can be well above WORKER_CONCURRENCY. */
  FLOWS_CONCURRENCY: int(50, 1),
  JOB_ATTEMPTS: int(3, 1),
  BACKOFF_BASE_MS: int(1000, 1),
  BACKOFF_MAX_MS: int(60_000, 1),
  /**
   * An attempt that finds Postgres unavailable (EDBUNAVAILABLE: its knowledge search timed out or could not connect)
   * uses no attempt: the job waits this long (half of it fixed, half random) and runs again, twice as long at each
   * deferral in a row, at most DB_UNAVAILABLE_MAX_DELAY_MS: a database outage makes jobs wait, never fail.
   */
  DB_UNAVAILABLE_DELAY_MS: int(2000, 1),
  DB_UNAVAILABLE_MAX_DELAY_MS: int(60_000, 1),
  SHUTDOWN_GRACE_MS: int(30_000, 0),
  /**
   * A SIGKILLed worker's job runs again elsewhere within LOCK_DURATION_MS + STALLED_INTERVAL_MS (12 s): its
   * lock lapses at most a lock duration after the kill (renewed every quarter of it, see worker-options.ts)
   * and the next stalled check moves it back to wait. A live worker loses a lock only if its event loop
   * stalls for three quarters of the duration (6 s).
   */
  LOCK_DURATION_MS: int(8_000, 1000),
  STALLED_INTERVAL_MS: int(4_000, 500),
  KEEP_COMPLETED_COUNT: int(10_000),
  KEEP_COMPLETED_AGE_S: int(24 * 3600),
  KEEP_FAILED_COUNT: int(50_000),
  KEEP_FAILED_AGE_S: int(14 * 24 * 3600),
  /**
   * How long an idempotency key is remembered from its job's first add, whether or not retention still keeps the
   * job (KEEP_COMPLETED_COUNT may remove a completed job seconds after it ran): a re-send inside it answers the
   * same job id, never a new job. Past it (and once the job is gone) the key makes a new job.
   */
  IDEMPOTENCY_TTL_S: int(24 * 3600, 1),

  RATE_LIMIT_PLAN_DEFAULT: unlessBlank(z.enum(['ai_pro', 'ai_flash', 'general']).default('general')),
  /** Overrides of the API admission plans, e.g. {"general":{"points":1000,"durationS":1}}. */
  RATE_LIMIT_PLANS: json(z.record(z.string(), z.object({ points: z.number().int().positive(), durationS: z.number().int().positive() }).strict()), {}),
  /** Per-model worker limits, e.g. {"gemini-2.5-pro":{"rpm":150,"tpm":2000000,"orgRpm":30}}; unset models use built-in defaults. */
  MODEL_LIMITS: json(
    z.record(z.string(), z.object({ rpm: z.number().positive().optional(), tpm: z.number().positive().optional(), orgRpm: z.number().positive().optional() }).strict()),
    {},
  ),
  /** Primary/fallback routes per "Agent:action" (or "Agent"), e.g. {"RiskAnalyzer:analyze_risks":{"primary":"gemini-2.5-pro","fallback":"gemini-2.5-flash","timeoutMs":30000,"retries":1}}. */
  AGENT_ROUTES: json(z.record(z.string(), routeSchema), {}),
  QUOTA_CACHE_MS: int(5000),
  /** A usage row read by a worker's run sink that died before committing it is taken over after this long. */
  USAGE_SINK_CLAIM_IDLE_MS: int(30_000, 10),
  /** How long an idle run sink blocks on the usage stream per read (a row arriving ends the block at once). */
  USAGE_SINK_BLOCK_MS: int(5000, 10),
  /**
   * Usage rows the stream may hold, not yet written to Postgres, before workers stop taking jobs (0 = no limit).
   * About 0.5 KB of Redis memory a row: the default bounds a long Postgres outage to some 100 MB of a
   * `noeviction` Redis, rather than growing until Redis refuses every write. Workers take jobs again once the
   * sinks brought it back to 80 %.
   */
  USAGE_BACKLOG_MAX_ROWS: int(200_000),
  /** Default plan of an org without its own (`npm run orgs -- set`): fair-share weight, jobs in flight (0 = no cap). */
  ORG_WEIGHT: num(z.number().positive(), 1),
  ORG_CONCURRENCY: int(0),
  /** Default per-org requests per minute per model, by tier, and estimated tokens per minute (0 = unlimited). */
  ORG_RPM_PRO: int(30),
  ORG_RPM_FLASH: int(200),
  ORG_TPM: int(0),
  /** Each live worker asks the dispatcher to keep BullMQ's wait list at this times its concurrency (fairness decided late)... */
  DISPATCH_BUFFER_RATIO: num(z.number().min(0.1).max(10), 0.5),
  /**
   * ...and at least what each worker finishes in this many ms at its recent rate, up to its concurrency
   * (fair/buffer-ask.ts): short jobs (cache hits) would otherwise find the list empty. 0: the ratio alone.
   */
  DISPATCH_BUFFER_MS: int(40),
  /** A dispatched job's slot is checked after this long without news (crashed worker, lost promote) and recovered. */
  FAIR_LEASE_MS: int(30_000, 1000),
  /**
   * A worker's dispatch loop runs a dispatch this often even when nothing woke it (a lost kick, a crashed worker's
   * leases to sweep); every change that frees capacity wakes it at once. Tests set it long, so only a wake explains a dispatch.
   */
  FAIR_SAFETY_POLL_MS: int(10_000, 100),
  CACHE_TTL_S: int(3600, 1),
  CACHE_L1_MAX_ENTRIES: int(10_000, 1),
  CACHE_L1_TTL_MS: int(60_000, 1),
  /** Cosine similarity a cached answer's prompt must reach to be served: in (0, 1] (near 0 it would serve answers to unrelated prompts). */
  SEMANTIC_CACHE_THRESHOLD: num(z.number().gt(0).max(1), 0.95),
  SEMANTIC_CACHE_TTL_S: int(7 * 24 * 3600, 1),
  /** Expired semantic-cache rows are deleted this often by the maintenance job, SEMANTIC_CACHE_SWEEP_BATCH rows per statement. */
  SEMANTIC_CACHE_SWEEP_EVERY_MS: int(10 * 60_000, 1000),
  SEMANTIC_CACHE_SWEEP_BATCH: int(1000, 1),
  /** maintenance_work_mem for HNSW builds (npm run ingest -- --rebuild-index); a graph that spills builds several times slower. */
  INDEX_BUILD_MEMORY: unlessBlank(z.string().regex(/^\d+\s*(kB|MB|GB)$/, 'e.g. 512MB').default('512MB')),
  BREAKER_FAILURE_THRESHOLD: int(5, 1),
  BREAKER_SUCCESS_THRESHOLD: int(2, 1),
  BREAKER_TIMEOUT_MS: int(30_000, 1),

  DLQ_REPROCESS_EVERY_MS: int(5 * 60_000, 1000),
  DLQ_MAX_RETRIES: int(3, 0),
  DLQ_BATCH: int(50, 1),

  /** Tracing is on when either endpoint is set (and OTEL_SDK_DISABLED is not): OTLP/HTTP, JSON. */
  OTEL_EXPORTER_OTLP_ENDPOINT: httpUrl,
  /** The full traces URL; wins over OTEL_EXPORTER_OTLP_ENDPOINT (to which `/v1/traces` is appended). */
  OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: httpUrl,
  OTEL_SERVICE_NAME: unlessBlank(z.string().default('agentq')),
  OTEL_SDK_DISABLED: bool(false),
  /** Prompt and answer text on model-call spans: off by default, since prompts carry customer data. */
  OTEL_CAPTURE_CONTENT: bool(false),
});

type ParsedEnv = z.infer<typeof configSchema>;
/** The parsed environment, with the defaults that depend on NODE_ENV resolved (parseConfig). */
export type Config = Omit<ParsedEnv, 'REDIS_URL' | 'REDIS_AUTOSTART' | 'GEMINI_EMULATOR'> & { REDIS_URL: string; REDIS_AUTOSTART: boolean; GEMINI_EMULATOR: boolean };

/**
 * The models a job may name in `options.model`: the two tiers, every route's primary and fallback, the
 * models given limits, and `ALLOWED_MODELS`. Anything else is refused at enqueue, before it is billed.
 */
export function configuredModels(cfg: Pick<Config, 'GEMINI_MODEL_FAST' | 'GEMINI_MODEL_PRO' | 'AGENT_ROUTES' | 'MODEL_LIMITS' | 'ALLOWED_MODELS'>): string[] {
  const routes = Object.values(cfg.AGENT_ROUTES).flatMap((r) => [r.primary, ...(r.fallback ? [r.fallback] : [])]);
  return [...new Set([cfg.GEMINI_MODEL_FAST, cfg.GEMINI_MODEL_PRO, ...routes, ...Object.keys(cfg.MODEL_LIMITS), ...cfg.ALLOWED_MODELS])].sort();
}

export class ConfigError extends Error {
  override name = 'ConfigError';
}

/** Parses once; a bad value throws a ConfigError whose message is one line naming the variable. */
export function parseConfig(env: NodeJS.ProcessEnv = process.env): Config {
  const result = configSchema.safeParse(env);
  if (result.success) {
    // Every key of one job must share a Redis Cluster slot: the prefix has to carry a {hash tag}.
    if (result.data.QUEUE_SHARDS > 1 && !/\{[^}]+\}/.test(result.data.QUEUE_PREFIX)) {
      throw new ConfigError(
        `Invalid environment variable QUEUE_PREFIX=${JSON.stringify(result.data.QUEUE_PREFIX)}: with QUEUE_SHARDS > 1 it must contain a {hash tag}, e.g. "{agentq}"`,
      );
    }
    for (const name of ['GOOGLE_GENAI_USE_VERTEXAI', 'GOOGLE_GENAI_USE_ENTERPRISE'] as const) {
      // The SDK's own reading of the switch: "true", any case.
      if (result.data[name]?.trim().toLowerCase() === 'true') {
        throw new ConfigError(`Invalid environment variable ${name}=${JSON.stringify(result.data[name])}: Vertex AI is not supported (agentq calls the Gemini API); unset it and set GEMINI_API_KEY or GOOGLE_API_KEY`);
      }
    }
    if (result.data.REDIS_CLUSTER_NODES && !/\{[^}]+\}/.test(result.data.QUEUE_PREFIX)) {
      throw new ConfigError(
        `Invalid environment variable QUEUE_PREFIX=${JSON.stringify(result.data.QUEUE_PREFIX)}: with REDIS_CLUSTER_NODES it must contain a {hash tag}, e.g. "{agentq}"`,
      );
    }
    const production = result.data.NODE_ENV === 'production';
    if (production && result.data.DATABASE_URL === undefined) {
      throw new ConfigError(
        `Missing environment variable DATABASE_URL: with NODE_ENV=production it must be set, or a forgotten one would run on a local embedded PGlite instead of your Postgres. Set DATABASE_URL to the Postgres URL, or DATABASE_URL=${EMBEDDED_DATABASE} to run on the embedded PGlite on purpose`,
      );
    }
    if (production && result.data.REDIS_URL === undefined && !result.data.REDIS_CLUSTER_NODES) {
      throw new ConfigError(
        `Missing environment variable REDIS_URL: with NODE_ENV=production it must be set (or REDIS_CLUSTER_NODES), or a forgotten one would look for Redis at ${DEFAULT_REDIS_URL}. Set REDIS_URL, e.g. redis://redis:6379`,
      );
    }
    return {
      ...result.data,
      // Named or unset, the embedded database is `undefined` to every reader (shared-embedded.ts opens it then).
      DATABASE_URL: result.data.DATABASE_URL === EMBEDDED_DATABASE ? undefined : result.data.DATABASE_URL,
      REDIS_URL: result.data.REDIS_URL ?? DEFAULT_REDIS_URL,
      REDIS_AUTOSTART: result.data.REDIS_AUTOSTART ?? !production,
      GEMINI_EMULATOR: result.data.GEMINI_EMULATOR ?? !production,
    };
  }
  const issue = result.error.issues[0];
  const name = String(issue.path[0]);
  const inside = issue.path.length > 1 ? ` (at ${issue.path.slice(1).join('.')})` : '';
  const value = env[name];
  // OTLP endpoints may carry credentials in their userinfo or query, as URLs do.
  const shown = /KEY|TOKEN|URL|PASSWORD|ENDPOINT/.test(name) ? '(hidden)' : JSON.stringify(value);
  throw new ConfigError(`Invalid environment variable ${name}${inside}=${shown}: ${issue.message}`);
}

/**
 * Refuses to serve without a Gemini key where the emulator is not allowed (GEMINI_EMULATOR; by default in
 * production): every answer and embedding would be synthetic, and cached as if real. Only the processes that
 * call Gemini check it (serving roles, ingest): migrate and the admin CLIs need no key.
 */
export function assertGeminiConfigured(cfg: Pick<Config, 'NODE_ENV' | 'GEMINI_API_KEY' | 'GEMINI_EMULATOR'> & Partial<Pick<Config, 'GOOGLE_API_KEY'>>): void {
  if (cfg.GEMINI_API_KEY || cfg.GOOGLE_API_KEY || cfg.GEMINI_EMULATOR) return;
  const why = cfg.NODE_ENV === 'production' ? 'NODE_ENV=production' : 'GEMINI_EMULATOR=false';
  throw new ConfigError(
    `Missing environment variable GEMINI_API_KEY: neither it nor GOOGLE_API_KEY is set, and with ${why} the built-in Gemini emulator does not answer (its answers and embeddings are synthetic, and would be cached as real ones). Set GEMINI_API_KEY (or GOOGLE_API_KEY), or GEMINI_EMULATOR=true to run on the emulator on purpose`,
  );
}

let cached: Config | undefined;
/** The process-wide config, parsed on first use. */
export function config(): Config {
  cached ??= parseConfig();
  return cached;
}
