import { z } from 'zod';

export type ModelTier = 'fast' | 'pro';

export interface Prompt {
  system?: string;
  user: string;
}

/** Things a prompt builder may use; injected so agents stay plain data + functions. */
export interface PromptContext {
  orgId: string;
  /** Retrieval over the knowledge tables (RAG); only agents that need it call it. */
  search?: (query: string, opts?: { tables?: string[]; limit?: number; threshold?: number }) => Promise<
    Array<{ table: string; id: string; content: string; similarity: number; metadata?: Record<string, unknown> }>
  >;
}

export interface AgentAction<I extends z.ZodType = z.ZodType, O extends z.ZodType = z.ZodType> {
  description: string;
  input: I;
  output: O;
  /** Bump when the prompt changes meaningfully: it is part of the result-cache key. */
  promptVersion: number;
  model: ModelTier;
  /** Builds the prompt. May return `extras` that `finalize` receives (e.g. retrieved sources). */
  prompt: (input: z.infer<I>, ctx: PromptContext) => (Prompt & { extras?: unknown }) | Promise<Prompt & { extras?: unknown }>;
  /** Adjusts the validated model output, e.g. attaches sources the model did not produce. */
  finalize?: (output: z.infer<O>, extras: unknown) => z.infer<O>;
  /**
   * Opt-in to the pgvector semantic cache: returns the free text to embed. Only free-text questions
   * qualify; structured actions must not be semantically cached, since two inputs that read alike can
   * differ in a number that changes the answer.
   */
  semanticKey?: (input: z.infer<I>) => string;
  /**
   * With `semanticKey`: what of the input besides that text decides the answer (which record a question is about,
   * which sources it may draw on), as a string compared exactly. Only cached answers with the same scope are
   * candidates: a question about one record is never answered from a near-identical one about another.
   */
  semanticScope?: (input: z.infer<I>) => string;
  /**
   * The knowledge tables the prompt searches (`ctx.search` gets only these; without any, no search at all). An
   * ingest into one invalidates the agent's cached answers, exact and semantic: the org's for its own rows, every
   * org's for shared ones. The answer depends on what the search finds, which the cache key cannot hold.
   */
  knowledge?: readonly string[];
  /**
   * Input is strict: a field the schema does not know is a 400 naming it (`input.startup.industy`), even
   * inside a plain `z.object`. List here the objects that accept and keep unknown fields instead: dotted
   * paths inside the input, `*` for any array index or key (e.g. `['metadata', 'items.*.extra']`).
   * A `z.looseObject` in the schema is open too.
   */
  passthrough?: readonly string[];
}

export interface AgentDefinition<A extends Record<string, AgentAction<any, any>> = Record<string, AgentAction<any, any>>> {
  name: string;
  description: string;
  actions: A;
}

/** Identity function that keeps the literal types of an agent for the typed client. */
export function defineAgent<const A extends Record<string, AgentAction<any, any>>>(def: AgentDefinition<A>): AgentDefinition<A> {
  return def;
}

export function defineAction<I extends z.ZodType, O extends z.ZodType>(action: AgentAction<I, O>): AgentAction<I, O> {
  return action;
}
