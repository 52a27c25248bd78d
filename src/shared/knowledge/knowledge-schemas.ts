import { z } from 'zod';

export const KNOWLEDGE_TABLES = ['industry_packs', 'playbooks', 'chat_facts'] as const;
export type KnowledgeTable = (typeof KNOWLEDGE_TABLES)[number];

export const isKnowledgeTable = (t: unknown): t is KnowledgeTable => KNOWLEDGE_TABLES.includes(t as KnowledgeTable);

/**
 * Text Postgres can store: it refuses a NUL character (\u0000) in text and jsonb, so one in a field is refused
 * here, a 400 naming the field, instead of by the INSERT or the search query (a 500).
 */
export const NUL_REFUSED = 'must not contain a NUL character (\\u0000)';
export const storable = (s: z.ZodString) => s.refine((v) => !v.includes('\u0000'), { message: NUL_REFUSED });

const externalId = storable(z.string().trim().min(1).max(200));
const text = (max: number) => storable(z.string().trim().min(1).max(max));
const optionalText = storable(z.string().max(200)).nullish();

/** One document per table, as ingested. Extra fields are ignored. */
export const docSchemas = {
  industry_packs: z.object({
    external_id: externalId,
    industry: text(200),
    display_name: text(500),
    description: storable(z.string().max(20_000)).default(''),
    is_active: z.boolean().default(true),
  }),
  playbooks: z.object({
    external_id: externalId,
    title: text(500),
    description: storable(z.string().max(20_000)).default(''),
    type: optionalText,
    difficulty: optionalText,
    is_active: z.boolean().default(true),
  }),
  chat_facts: z.object({
    external_id: externalId,
    content: text(20_000),
    startup_id: optionalText,
    fact_type: optionalText,
    confidence: z.number().min(0).max(1).nullish(),
    expires_at: z.iso.datetime({ offset: true }).nullish(),
  }),
} as const;

export type KnowledgeDoc<T extends KnowledgeTable = KnowledgeTable> = z.infer<(typeof docSchemas)[T]>;

/** The text that gets embedded for a document. */
export function embeddingText(table: KnowledgeTable, doc: KnowledgeDoc): string {
  switch (table) {
    case 'industry_packs': {
      const d = doc as KnowledgeDoc<'industry_packs'>;
      return `${d.display_name}\n${d.industry}\n${d.description}`.trim();
    }
    case 'playbooks': {
      const d = doc as KnowledgeDoc<'playbooks'>;
      return `${d.title}\n${d.description}`.trim();
    }
    case 'chat_facts':
      return (doc as KnowledgeDoc<'chat_facts'>).content;
  }
}

export type DocCheck<T extends KnowledgeTable> =
  | { ok: true; doc: KnowledgeDoc<T> }
  | { ok: false; issues: Array<{ path: string; message: string }> };

/** Validates one raw document; issue paths name the field (`confidence`, `title`, ...). */
export function checkDoc<T extends KnowledgeTable>(table: T, raw: unknown): DocCheck<T> {
  const res = docSchemas[table].safeParse(raw);
  if (res.success) return { ok: true, doc: res.data as KnowledgeDoc<T> };
  return {
    ok: false,
    issues: res.error.issues.map((i) => ({ path: i.path.length ? i.path.join('.') : '(document)', message: i.message })),
  };
}
