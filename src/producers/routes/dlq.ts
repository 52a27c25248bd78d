import type { FastifyInstance, FastifyRequest } from 'fastify';
import { z } from 'zod';
import { principalOf } from '../auth.js';
import { ValidationError } from '../../shared/core/errors.js';
import { DLQ_CLASSES } from '../../shared/core/dlq-classify.js';
import { decodeCursor, encodeCursor } from '../../shared/ops/dlq-store.js';
import { paramDetails } from '../query-details.js';
import type { DlqScope, DlqService } from '../../shared/ops/dlq-service.js';

/** Bulk retry handles at most this many entries per request; `more: true` says to call again. */
export const BULK_RETRY_MAX = 1000;

const idParam = z.object({ id: z.string().min(1).max(200) });
const listQuery = z
  .object({
    agent: z.string().min(1).max(200).optional(),
    class: z.enum(DLQ_CLASSES).optional(),
    cursor: z.string().min(1).max(500).optional(),
    limit: z.coerce.number().int().min(1).max(200).default(50),
  })
  .strict();
const retryBody = z.object({ input: z.unknown() }).partial().strict();
const bulkBody = z.object({ agent: z.string().min(1).max(200).optional(), class: z.enum(DLQ_CLASSES).optional() }).strict();

function parse<T extends z.ZodType>(schema: T, value: unknown, prefix: string): z.infer<T> {
  const result = schema.safeParse(value);
  if (!result.success) throw new ValidationError(`invalid ${prefix ? prefix.slice(0, -1) : 'body'}`, paramDetails(result.error, prefix));
  return result.data;
}

/** An admin key sees every org's entries; any other key only its own org's. */
function scopeOf(req: FastifyRequest): DlqScope {
  const p = principalOf(req);
  return p.role === 'admin' ? {} : { orgId: p.orgId };
}

export function dlqRoutes(app: FastifyInstance, deps: { dlq: DlqService }) {
  app.get('/v1/dlq', async (req) => {
    const q = parse(listQuery, req.query, 'query.');
    const cursor = q.cursor ? decodeCursor(q.cursor) : undefined;
    if (q.cursor && !cursor) throw new ValidationError('invalid query', [{ path: 'query.cursor', message: 'not a cursor returned by this API' }]);
    const { entries, next } = await deps.dlq.list(scopeOf(req), { agent: q.agent, class: q.class, cursor, limit: q.limit });
    return { entries, ...(next ? { nextCursor: encodeCursor(next) } : {}) };
  });

  app.get('/v1/dlq/:id', async (req) => {
    const { id } = parse(idParam, req.params, 'path.');
    return deps.dlq.get(scopeOf(req), id);
  });

  app.post('/v1/dlq/retry', async (req) => {
    const filter = parse(bulkBody, req.body ?? {}, '');
    const res = await deps.dlq.retryMany(scopeOf(req), { agent: filter.agent, class: filter.class }, BULK_RETRY_MAX);
    req.log.info({ ...filter, retried: res.retried }, 'dead-letter bulk retry');
    return res;
  });

  app.post('/v1/dlq/:id/retry', async (req, reply) => {
    const { id } = parse(idParam, req.params, 'path.');
    const body = parse(retryBody, req.body ?? {}, '');
    const res = await deps.dlq.retry(scopeOf(req), id, 'input' in body ? body.input : undefined);
    req.log.info({ jobId: id, dlqRetries: res.dlqRetries, correctedInput: 'input' in body }, 'dead-letter entry retried');
    return reply.code(202).send(res);
  });

  app.delete('/v1/dlq/:id', async (req, reply) => {
    const { id } = parse(idParam, req.params, 'path.');
    await deps.dlq.remove(scopeOf(req), id);
    req.log.info({ jobId: id }, 'dead-letter entry deleted');
    return reply.code(204).send();
  });
}
