import type { FastifyInstance } from 'fastify';

export interface AgentCatalog {
  list(): unknown[];
}

export function agentRoutes(app: FastifyInstance, agents: AgentCatalog) {
  app.get('/v1/agents', async () => ({ agents: agents.list() }));
}
