import { createBullBoard } from '@bull-board/api';
import { BullMQAdapter } from '@bull-board/api/bullMQAdapter';
import { FastifyAdapter } from '@bull-board/fastify';
import type { Queue } from 'bullmq';
import type { FastifyInstance } from 'fastify';
import { isParked } from '../shared/fair/park.js';

export const BULL_BOARD_PATH = '/admin/queues';

/**
 * A job's title in Bull Board: its org and agent:action, and for a job parked for the fair dispatcher a plain
 * "waiting for dispatch" (BullMQ lists it as delayed to a far-future instant, which reads like a stuck retry).
 */
export function jobTitle(job: { name?: string; timestamp?: number; delay?: number; data?: { orgId?: unknown; model?: unknown } }): string {
  const org = typeof job.data?.orgId === 'string' ? ` · org ${job.data.orgId}` : '';
  const model = typeof job.data?.model === 'string' ? ` · ${job.data.model}` : '';
  const parked = typeof job.timestamp === 'number' && typeof job.delay === 'number' && isParked({ timestamp: job.timestamp, delay: job.delay });
  return `${parked ? '[waiting for dispatch] ' : ''}${job.name ?? ''}${org}${model}`;
}

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
    queues: opts.queues.map((q) => {
      const adapter = new BullMQAdapter(q, { readOnlyMode: opts.readOnly });
      adapter.setFormatter('name', jobTitle);
      return adapter;
    }),
    // @bull-board/fastify pins its own copy of @bull-board/api, whose adapter type differs only nominally.
    serverAdapter: serverAdapter as never,
    options: { uiConfig: { boardTitle: 'agentq', hideDocsLink: true } },
  });
  await scope.register(serverAdapter.registerPlugin(), { prefix: basePath });
}
