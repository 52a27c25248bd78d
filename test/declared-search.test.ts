import { describe, expect, it } from 'vitest';
import { UndeclaredKnowledgeError } from '../src/shared/core/errors.js';
import { classify } from '../src/shared/core/outcomes.js';
import { defaultRegistry } from '../src/shared/agents/registry.js';
import { declaredSearch } from '../src/workers/declared-search.js';

describe('an action searches only the knowledge it declares', () => {
  const calls: object[] = [];
  const search = async (o: object) => {
    calls.push(o);
    return [];
  };
  const who = { agent: 'A', action: 'b' };

  it('searches the declared tables (all of them when the prompt names none), in the job\'s org', async () => {
    const s = declaredSearch(search, 'org-1', ['playbooks', 'chat_facts'], who);
    await s('q');
    await s('q', { tables: ['chat_facts'], limit: 3 });
    expect(calls).toEqual([
      { query: 'q', orgId: 'org-1', tables: ['playbooks', 'chat_facts'] },
      { query: 'q', orgId: 'org-1', tables: ['chat_facts'], limit: 3 },
    ]);
  });

  it('refuses a table the action does not declare, as a failure that is never retried', async () => {
    const n = calls.length;
    const err = await declaredSearch(search, 'org-1', ['playbooks'], who)('q', { tables: ['playbooks', 'industry_packs'] }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(UndeclaredKnowledgeError);
    expect((err as Error).message).toContain('industry_packs');
    expect(classify(err)).toMatchObject({ kind: 'fail', code: 'EUNDECLAREDKNOWLEDGE' });
    expect(calls.length).toBe(n);
  });

  it('the registry names the agents that search a table: KnowledgeAssistant for every knowledge table, no one else', () => {
    const registry = defaultRegistry();
    for (const table of ['playbooks', 'industry_packs', 'chat_facts']) expect(registry.readersOf(table)).toEqual(['KnowledgeAssistant']);
    expect(registry.readersOf('users')).toEqual([]);
  });
});
