import { Readable } from 'node:stream';
import { ValidationError } from '../../shared/core/errors.js';
import { deriveStage } from '../../shared/core/job-stage.js';
import type { JobRow, ListFilter, OrgJobIndexReader } from '../../shared/queue/org-job-index.js';
import { principalOf } from '../auth.js';
import type { JobView } from '../job-service.js';
import type { Handler } from '../route-spec.js';
import type { listQuery } from '../schemas/jobs.js';

export interface JobListDeps {
  index: OrgJobIndexReader;
  /** Agent names the `agent` filter accepts. */
  agentExists: (name: string) => boolean;
  pageSize: number;
}

function parseJson(raw: string | undefined): unknown {
  if (raw === undefined) return undefined;
  try {
    return JSON.parse(raw);
  } catch {
    return raw;
  }
}

/** A row of the index page as the same view `GET /v1/jobs/:id` answers. */
export function rowToView(row: JobRow, orgId: string): JobView | undefined {
  if (row.tombstone) {
    const t = parseJson(row.tombstone) as (JobView & { orgId?: string }) | undefined;
    if (!t || typeof t !== 'object' || t.orgId !== orgId) return undefined;
    const { orgId: _omit, ...view } = t;
    return { ...view, stage: { name: 'done', outcome: 'cancelled' } };
  }
  const name = row.name ?? '';
  const colon = name.indexOf(':');
  const result = parseJson(row.returnvalue);
  const progress = parseJson(row.progress) ?? 0;
  const attempts = Number(row.attemptsMade ?? 0);
  return {
    id: row.id,
    agent: colon >= 0 ? name.slice(0, colon) : name,
    action: colon >= 0 ? name.slice(colon + 1) : '',
    state: row.state,
    // Without why a job waits: a listing reads no fair dispatcher state per job (GET /v1/jobs/:id does).
    stage: deriveStage({ state: row.state, attemptsMade: attempts, progress }),
    progress,
    ...(result !== undefined && result !== null ? { result: result as JobView['result'] } : {}),
    ...(row.failedReason ? { error: row.failedReason } : {}),
    attempts,
    createdAt: new Date(Number(row.timestamp ?? 0)).toISOString(),
    ...(row.finishedOn ? { finishedAt: new Date(Number(row.finishedOn)).toISOString() } : {}),
  };
}

/**
 * `GET /v1/jobs?state=&agent=&since=&limit=`: the caller's org's jobs, newest first, as one JSON array
 * written page by page. The body is a pull stream: a page is read from Redis only when the socket has taken
 * the previous ones, so memory stays flat whatever the count and a slow client slows only its own reads.
 */
export const listJobs =
  (deps: JobListDeps): Handler<{ querystring: typeof listQuery }> =>
  async (req, reply) => {
    const { orgId } = principalOf(req);
    const q = req.query;
    if (q.agent !== undefined && !deps.agentExists(q.agent)) {
      throw new ValidationError('invalid query', [{ path: 'query.agent', message: `unknown agent "${q.agent}"` }]);
    }
    const filter: ListFilter = { state: q.state, agent: q.agent, sinceMs: q.since };
    const limit = q.limit ?? Infinity;

    // The first page is read before any byte is sent, so Redis being unavailable (or a cluster between
    // owners) is a plain 503; a failure after that destroys the socket (fastify does, for a stream error
    // once headers are out), so a client sees an aborted response, never a short but well-formed one.
    const pages = deps.index.pages(orgId, filter, deps.pageSize)[Symbol.asyncIterator]();
    const first = await pages.next();
    async function* rest(): AsyncGenerator<Awaited<ReturnType<typeof pages.next>>['value']> {
      try {
        if (first.done) return;
        yield first.value;
        for (let page = await pages.next(); !page.done; page = await pages.next()) yield page.value;
      } finally {
        await pages.return?.(undefined);
      }
    }

    async function* body(): AsyncGenerator<string> {
      yield '[';
      let sent = 0;
      for await (const rows of rest()) {
        let chunk = '';
        for (const row of rows) {
          const view = rowToView(row, orgId);
          // Tombstones are not filtered by agent in Redis (their agent is inside their JSON).
          if (!view || (filter.agent && view.agent !== filter.agent)) continue;
          chunk += (sent === 0 ? '' : ',') + JSON.stringify(view);
          if (++sent >= limit) break;
        }
        if (chunk) yield chunk;
        if (sent >= limit) break;
      }
      yield ']';
    }

    const stream = Readable.from(body(), { objectMode: false, highWaterMark: 16 * 1024 });
    stream.on('error', (err) => req.log.error({ err }, 'job listing failed mid-stream'));
    return reply.header('content-type', 'application/json; charset=utf-8').header('cache-control', 'no-store').send(stream);
  };
