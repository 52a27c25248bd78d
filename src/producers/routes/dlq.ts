import type { FastifyRequest } from 'fastify';
import { callerOf } from '../auth.js';
import { ValidationError } from '../../shared/core/errors.js';
import { decodeCursor, encodeCursor } from '../../shared/ops/dlq-store.js';
import type { DlqScope, DlqService } from '../../shared/ops/dlq-service.js';
import type { Handler } from '../route-spec.js';
import type { idParam } from '../schemas/common.js';
import type { dlqBulkBody, dlqListQuery, dlqRetryBody } from '../schemas/ops.js';

/** Bulk retry handles at most this many entries per request; `more: true` says to call again. */
export const BULK_RETRY_MAX = 1000;

export interface DlqRouteDeps {
  dlq: DlqService;
}

/** The operator sees every org's entries; an org-admin only its own org's (another org's entry is a 404). */
function scopeOf(req: FastifyRequest): DlqScope {
  const p = callerOf(req);
  return p.role === 'operator' ? {} : { orgId: p.orgId };
}

export const listDeadLetters =
  (deps: DlqRouteDeps): Handler<{ querystring: typeof dlqListQuery }> =>
  async (req) => {
    const q = req.query;
    const cursor = q.cursor ? decodeCursor(q.cursor) : undefined;
    if (q.cursor && !cursor) throw new ValidationError('invalid query', [{ path: 'query.cursor', message: 'not a cursor returned by this API' }]);
    const { entries, next } = await deps.dlq.list(scopeOf(req), { agent: q.agent, class: q.class, cursor, limit: q.limit });
    return { entries, ...(next ? { nextCursor: encodeCursor(next) } : {}) };
  };

export const getDeadLetter =
  (deps: DlqRouteDeps): Handler<{ params: typeof idParam }> =>
  async (req) =>
    deps.dlq.get(scopeOf(req), req.params.id);

export const retryDeadLetters =
  (deps: DlqRouteDeps): Handler<{ body: typeof dlqBulkBody }> =>
  async (req) => {
    const filter = req.body ?? {};
    const res = await deps.dlq.retryMany(scopeOf(req), { agent: filter.agent, class: filter.class }, BULK_RETRY_MAX);
    req.log.info({ ...filter, retried: res.retried }, 'dead-letter bulk retry');
    return res;
  };

/** With `input`, edit-and-retry: the corrected input is validated against the agent's schema first. */
export const retryDeadLetter =
  (deps: DlqRouteDeps): Handler<{ params: typeof idParam; body: typeof dlqRetryBody }> =>
  async (req, reply) => {
    const id = req.params.id;
    const body = req.body ?? {};
    const res = await deps.dlq.retry(scopeOf(req), id, 'input' in body ? body.input : undefined);
    req.log.info({ jobId: id, dlqRetries: res.dlqRetries, correctedInput: 'input' in body }, 'dead-letter entry retried');
    return reply.code(202).send(res);
  };

export const deleteDeadLetter =
  (deps: DlqRouteDeps): Handler<{ params: typeof idParam }> =>
  async (req, reply) => {
    await deps.dlq.remove(scopeOf(req), req.params.id);
    req.log.info({ jobId: req.params.id }, 'dead-letter entry deleted');
    return reply.code(204).send();
  };
