import { z } from 'zod';
import { defineAction, defineAgent, type PromptContext } from './define-agent.js';
import { DATA_NOTICE } from './startup-profile.js';

/** The knowledge tables retrieval searches, by the source type the answer reports. */
export const KNOWLEDGE_TABLES = {
  playbook: 'playbooks',
  industry_pack: 'industry_packs',
  chat_fact: 'chat_facts',
} as const;

type SourceType = keyof typeof KNOWLEDGE_TABLES;
const SOURCE_TYPES = Object.keys(KNOWLEDGE_TABLES) as [SourceType, ...SourceType[]];

export const RETRIEVAL = { limit: 5, threshold: 0.6 } as const;
const SNIPPET_CHARS = 1500;

const answerInput = z.object({
  question: z.string().trim().min(3).max(2000),
  startupId: z.string().min(1).max(100).optional(),
  includePlaybooks: z.boolean().default(true),
  includeIndustryPacks: z.boolean().default(true),
  includeChatFacts: z.boolean().default(false),
});

const sourceSchema = z.object({
  type: z.enum(SOURCE_TYPES),
  id: z.string(),
  title: z.string(),
  relevance: z.number().min(0).max(1),
});

const answerOutput = z.object({
  answer: z.string().min(1).max(6000),
  citations: z.array(z.number().int().min(1).max(RETRIEVAL.limit)).max(20).describe('Numbers [n] of the context passages the answer relies on'),
  sources: z.array(sourceSchema).max(RETRIEVAL.limit).describe('Leave empty: filled in by the system'),
  foundRelevantContext: z.boolean().describe('Whether the numbered context held anything relevant to the question'),
});

export type KnowledgeSource = z.infer<typeof sourceSchema>;
type Doc = Awaited<ReturnType<NonNullable<PromptContext['search']>>>[number];

const typeOfTable = (table: string): SourceType =>
  (Object.entries(KNOWLEDGE_TABLES).find(([, t]) => t === table)?.[0] as SourceType | undefined) ?? 'playbook';

function titleOf(doc: Doc): string {
  const t = doc.metadata?.title;
  if (typeof t === 'string' && t.length > 0) return t.slice(0, 200);
  const firstLine = doc.content.split('\n', 1)[0].trim();
  return firstLine.length > 80 ? `${firstLine.slice(0, 77)}...` : firstLine || doc.id;
}

function tablesFor(input: z.infer<typeof answerInput>): string[] {
  return [
    ...(input.includePlaybooks ? [KNOWLEDGE_TABLES.playbook] : []),
    ...(input.includeIndustryPacks ? [KNOWLEDGE_TABLES.industry_pack] : []),
    ...(input.includeChatFacts ? [KNOWLEDGE_TABLES.chat_fact] : []),
  ];
}

/**
 * Search scopes by org and table only; when the question is about one startup, a chat fact recorded for
 * another startup of the same org is not about it, so it is left out here.
 */
function inScope(doc: Doc, startupId: string | undefined): boolean {
  if (startupId === undefined || doc.table !== KNOWLEDGE_TABLES.chat_fact) return true;
  // match_documents reports chat facts' owner as `startup_id`.
  const owner = doc.metadata?.startup_id;
  return owner === undefined || owner === null || owner === startupId;
}

export const knowledgeAssistant = defineAgent({
  name: 'KnowledgeAssistant',
  description: 'Answers founders\' questions from the playbooks, industry packs and remembered chat facts, with citations.',
  actions: {
    answer: defineAction({
      description: 'Retrieval-augmented answer to a free-text question, citing the numbered passages it used.',
      input: answerInput,
      output: answerOutput,
      promptVersion: 1,
      model: 'fast',
      // Free text is the one case where two differently worded inputs deserve the same answer. Structured
      // actions do not opt in: their inputs embed alike while differing in a number or enum that changes
      // the result (a runway of 3 vs 30 months), so only exact (L1/L2) caching is safe for them.
      semanticKey: (input) => input.question,
      // The startup a question is about and the tables it may draw on change the passages, so the answer.
      semanticScope: (input) => JSON.stringify([input.startupId ?? null, input.includePlaybooks, input.includeIndustryPacks, input.includeChatFacts]),
      knowledge: Object.values(KNOWLEDGE_TABLES),
      prompt: async (input, ctx) => {
        const tables = tablesFor(input);
        const found = tables.length > 0 && ctx.search ? await ctx.search(input.question, { tables, ...RETRIEVAL }) : [];
        const docs = found.filter((d) => inScope(d, input.startupId)).slice(0, RETRIEVAL.limit);
        const context = docs.length
          ? docs.map((d, i) => `[${i + 1}] (${typeOfTable(d.table)}: ${titleOf(d)})\n${d.content.slice(0, SNIPPET_CHARS)}`).join('\n\n')
          : '(no context was found)';
        return {
          system: [
            'You are a knowledgeable startup advisor answering a founder\'s question.',
            'Answer from the numbered context passages below. Cite every claim taken from them with its number in',
            'square brackets, e.g. [2], and list those numbers in "citations". Never cite a number that is not in the',
            'context. If the context holds nothing relevant to the question, say so plainly at the start of the answer,',
            'set foundRelevantContext to false, cite nothing, and only then offer general advice, marked as such.',
            'Leave "sources" empty: the system fills it in.',
            DATA_NOTICE,
          ].join('\n'),
          user: `<context>\n${context}\n</context>\n\n<question>\n${input.question}\n</question>`,
          extras: docs,
        };
      },
      finalize: (output, extras) => {
        const docs = (extras ?? []) as Doc[];
        const citations = [...new Set(output.citations)].filter((n) => Number.isInteger(n) && n >= 1 && n <= docs.length).sort((a, b) => a - b);
        return {
          answer: output.answer,
          citations,
          // sources[n - 1] is passage [n], so a citation indexes straight into it.
          sources: docs.map((d) => ({
            type: typeOfTable(d.table),
            id: d.id,
            title: titleOf(d),
            relevance: Math.min(1, Math.max(0, d.similarity)),
          })),
          // Nothing retrieved means nothing relevant, whatever the model claims; with passages, a model that
          // cites one found something even if it forgot to say so.
          foundRelevantContext: docs.length > 0 && (output.foundRelevantContext || citations.length > 0),
        };
      },
    }),
  },
});
