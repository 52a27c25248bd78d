import { z } from 'zod';
import { DLQ_CLASSES } from '../../shared/core/dlq-classify.js';
import { ORG_ID } from '../../shared/fair/org-plan-schema.js';

export const dlqListQuery = z
  .object({
    agent: z.string().min(1).max(200).optional(),
    class: z.enum(DLQ_CLASSES).optional(),
    cursor: z.string().min(1).max(500).optional().describe('`nextCursor` of the previous page'),
    limit: z.coerce.number().int().min(1).max(200).default(50),
  })
  .strict();
/** Both retry bodies may be left out: fastify hands the validator `null` for a request without one. */
export const dlqRetryBody = z
  .object({ input: z.unknown().describe('Corrected input, validated against the agent’s schema (edit-and-retry)') })
  .partial()
  .strict()
  .nullable();
export const dlqBulkBody = z.object({ agent: z.string().min(1).max(200).optional(), class: z.enum(DLQ_CLASSES).optional() }).strict().nullable();

export const dlqEntry = z.looseObject({
  id: z.string(),
  orgId: z.string(),
  agent: z.string(),
  action: z.string(),
  model: z.string().optional(),
  class: z.enum(DLQ_CLASSES),
  type: z.string(),
  reason: z.string(),
  failedAt: z.string(),
  attempts: z.number(),
  dlqRetries: z.number(),
  lastError: z.string().optional(),
  lastRetryAt: z.string().optional(),
  requestId: z.string().optional(),
});
export const dlqPage = z.object({ entries: z.array(dlqEntry), nextCursor: z.string().optional() });
export const dlqRetried = z.looseObject({ id: z.string(), state: z.string(), dlqRetries: z.number() });
export const dlqBulkRetried = z.looseObject({ retried: z.number(), more: z.boolean() });

/** Wider windows are refused: the percentiles are computed over every row of the window. */
export const USAGE_MAX_RANGE_DAYS = 366;

/**
 * A calendar date (UTC midnight) or a date-time with `Z` or an offset: one without would be read in the API
 * process's own zone, and day groups are UTC. The date must exist: `Date` rolls 2024-02-30 over to March 1.
 */
const isoDate = z
  .string()
  .max(40)
  .refine((s) => /^\d{4}-\d{2}-\d{2}([T ]\d{2}:\d{2}(:\d{2}(\.\d{1,9})?)?(Z|[+-]\d{2}:?\d{2}))?$/.test(s) && existingDate(s), 'expected an ISO 8601 date, or a date-time with Z or an offset')
  .transform((s) => new Date(s));

function existingDate(s: string): boolean {
  const [y, m, d] = s.slice(0, 10).split('-').map(Number);
  const day = new Date(Date.UTC(y, m - 1, d));
  return !Number.isNaN(Date.parse(s)) && day.getUTCFullYear() === y && day.getUTCMonth() === m - 1 && day.getUTCDate() === d;
}

export const usageQuery = z
  .object({
    from: isoDate.optional().describe('Default: 30 days before `to`'),
    to: isoDate.optional().describe('Default: now'),
    groupBy: z.enum(['agent', 'model', 'day', 'tier']).default('agent'),
  })
  .strict();

const usageGroup = z.object({
  key: z.string(),
  jobs: z.number().describe('Distinct jobs with a recorded row in the group: a job once, however many attempts (and delayed runs) it had; knowledge ingestion and search are no job'),
  tokens: z.object({
    input: z.number(),
    output: z.number(),
    total: z.number(),
    cached: z.number().describe('Of input: served from Gemini’s implicit cache, billed at the cached price'),
    thoughts: z.number().describe('Of output: thinking tokens, billed at the output price'),
  }),
  costUsd: z.number().describe('Every billed call: completed and failed attempts, and the calls a run paid for before it was delayed'),
  standardCostUsd: z.number().describe('The same tokens at the standard tier’s price'),
  savingsUsd: z.number().describe('standardCostUsd - costUsd: what flex / batch saved (negative for priority)'),
  embedding: z
    .object({
      tokens: z.number(),
      costUsd: z.number(),
      estimated: z.literal(true),
      ingest: z
        .object({ tokens: z.number(), costUsd: z.number() })
        .describe('Of tokens and costUsd: the org’s knowledge ingestion (POST /v1/knowledge/:table, npm run ingest --org; agent `knowledge`, action `ingest:<table>`)'),
      search: z
        .object({ tokens: z.number(), costUsd: z.number() })
        .describe('Of tokens and costUsd: the org’s POST /v1/knowledge/search queries (agent `knowledge`, action `search`)'),
    })
    .describe('Embedding calls of the attempts (semantic cache, knowledge search), of the org’s knowledge ingestion and of its search API queries: Gemini reports no usage for them, so the tokens are ESTIMATED locally (~4 characters a token) and priced at the embedding model’s input price; not in costUsd, but counted by the monthly budget'),
  cacheHitRate: z.number().describe('Of the completed attempts'),
  durationMs: z.object({ p50: z.number(), p95: z.number() }).describe('Of the attempts (a delayed run is none, nor an ingest or a search)'),
});

/** The window split by service tier: `/v1/usage` and the dashboard's API answer it from the same read (routes/usage.ts). */
const usageByTier = z
  .array(
    z.object({
      tier: z.string(),
      jobs: z.number(),
      costUsd: z.number(),
      standardCostUsd: z.number(),
      savingsUsd: z.number(),
      embedding: z
        .object({ tokens: z.number(), costUsd: z.number(), estimated: z.literal(true) })
        .describe('The embedding calls billed at this tier (all at `standard`, the embedding model’s online price): ESTIMATED, as a group’s'),
    }),
  )
  .describe('The same window split by service tier, with the savings against the standard tier; the tiers’ costUsd and embedding.costUsd add up to the total’s');

export const usageReport = z.object({
  from: z.string(),
  to: z.string(),
  groupBy: z.enum(['agent', 'model', 'day', 'tier']),
  groups: z.array(usageGroup),
  total: usageGroup.describe('The whole window (key `total`): percentiles over every attempt, not summed from groups'),
  byTier: usageByTier,
});

/** The dashboard's counterpart of `/v1/usage`: an operator may pick one org or see all, and group by org. */
export const adminUsageQuery = z
  .object({
    from: isoDate.optional().describe('Default: 30 days before `to`'),
    to: isoDate.optional().describe('Default: now'),
    groupBy: z.enum(['agent', 'model', 'day', 'org']).default('agent'),
    org: z.string().regex(ORG_ID, 'letters, digits and _ . : - (max 128)').optional().describe('One org (operators; an org admin may name only its own)'),
  })
  .strict();

export const adminUsageReport = z.object({
  from: z.string(),
  to: z.string(),
  groupBy: z.enum(['agent', 'model', 'day', 'org']),
  scope: z.object({ kind: z.enum(['all', 'org']), orgId: z.string().optional() }).describe('What the caller may see'),
  org: z.string().nullable().describe('The org shown, or null for every org'),
  groups: z.array(usageGroup),
  total: usageGroup,
  byTier: usageByTier,
});

export const usageAssetParam = z.object({ file: z.enum(['usage.js', 'chart.umd.min.js']) });
