import { createBullBoard } from '@bull-board/api';
import { BullMQAdapter } from '@bull-board/api/bullMQAdapter';
import { FastifyAdapter } from '@bull-board/fastify';
import type { Queue } from 'bullmq';
import type { FastifyInstance } from 'fastify';

export const BULL_BOARD_PATH = '/admin/queues';

/**
 * Mounts Bull Board (page, JSON API and static assets) under `basePath` in `scope`. Authentication is the
 * caller's: register this inside a scope whose onRequest hook already guards every route.
 */
export async function registerBullBoard(scope: FastifyInstance, opts: { queues: Queue[]; readOnly: boolean; basePath?: string }) {
  const basePath = opts.basePath ?? BULL_BOARD_PATH;
  const serverAdapter = new FastifyAdapter();
  serverAdapter.setBasePath(basePath);
  createBullBoard({
    // readOnlyMode also turns off retries in the UI; the auth hook refuses mutations as well.
    queues: opts.queues.map((q) => new BullMQAdapter(q, { readOnlyMode: opts.readOnly })),
    // @bull-board/fastify pins its own copy of @bull-board/api, whose adapter type differs only nominally.
    serverAdapter: serverAdapter as never,
    options: { uiConfig: { boardTitle: 'agentq', hideDocsLink: true } },
  });
  await scope.register(serverAdapter.registerPlugin(), { prefix: basePath });
}
