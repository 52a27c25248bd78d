import type { PromptContext } from '../shared/agents/define-agent.js';
import { UndeclaredKnowledgeError } from '../shared/core/errors.js';
import type { VectorSearch } from '../shared/knowledge/vector-search.js';

type Search = VectorSearch['search'];

/**
 * An action's retrieval: bound to the job's org, and to the tables the action declares (`knowledge`), all of them
 * when the prompt names none. A table it does not declare is a definition error: an ingest into that table would
 * not invalidate the action's cached answers (reader-invalidation.ts).
 */
export function declaredSearch(search: Search, orgId: string, declared: readonly string[], who: { agent: string; action: string }): NonNullable<PromptContext['search']> {
  return (query, o) => {
    const tables = o?.tables ?? [...declared];
    const undeclared = tables.filter((t) => !declared.includes(t));
    if (undeclared.length) return Promise.reject(new UndeclaredKnowledgeError(who.agent, who.action, undeclared));
    return search({ query, orgId, ...o, tables });
  };
}
