import type { ResultCache } from '../cache/result-cache.js';
import type { SemanticCache } from '../cache/semantic-cache.js';

export interface ReaderInvalidationDeps {
  /** The agents whose prompts search a table (the registry's `readersOf`). */
  readersOf: (table: string) => string[];
  /** An org's answers are in its queue shard's cache; shared rows reach every shard's (`invalidateAgentEverywhere`). */
  results: Pick<ResultCache, 'invalidateAgent' | 'invalidateAgentEverywhere'>;
  semantic: Pick<SemanticCache, 'invalidate' | 'invalidateAgentEverywhere'>;
}

/**
 * What an ingest into a knowledge table invalidates: the cached answers, exact and semantic, of every agent whose
 * prompt searches it (an answer depends on what the search finds, which its cache key cannot hold), in the org
 * for its own rows or in every org for shared ones. The semantic rows go first: a job looking up between the two
 * would otherwise miss the bumped exact cache, hit an old semantic row and store it under the new versions.
 * Returns the agents invalidated.
 */
export function createReaderInvalidation(deps: ReaderInvalidationDeps) {
  return async function afterIngest(table: string, orgId: string | undefined): Promise<string[]> {
    const agents = deps.readersOf(table);
    for (const agent of agents) {
      if (orgId === undefined) {
        await deps.semantic.invalidateAgentEverywhere(agent);
        await deps.results.invalidateAgentEverywhere(agent);
      } else {
        await deps.semantic.invalidate(orgId, agent);
        await deps.results.invalidateAgent(orgId, agent);
      }
    }
    return agents;
  };
}

export type AfterIngest = ReturnType<typeof createReaderInvalidation>;

/**
 * The invalidations of one result cache per queue shard (each caches its orgs' answers): an org's go to its shard's
 * cache, an agent's in every org to every shard's.
 */
export function shardedResults(caches: ReadonlyArray<Pick<ResultCache, 'invalidateOrg' | 'invalidateAgent' | 'invalidateAgentEverywhere'>>, shardOf: (orgId: string) => number) {
  return {
    invalidateOrg: (orgId: string) => caches[shardOf(orgId)].invalidateOrg(orgId),
    invalidateAgent: (orgId: string, agent: string) => caches[shardOf(orgId)].invalidateAgent(orgId, agent),
    invalidateAgentEverywhere: async (agent: string) => void (await Promise.all(caches.map((c) => c.invalidateAgentEverywhere(agent)))),
  };
}
