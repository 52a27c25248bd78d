import type { Handler } from '../route-spec.js';

export interface AgentCatalog {
  list(): unknown[];
}

export const listAgents =
  (agents: AgentCatalog): Handler<object> =>
  async () => ({ agents: agents.list() });
