import type { JobProducer } from '../shared/queue/job-producer.js';
import type { JobService } from '../producers/job-service.js';
import type { Cell } from './cell.js';

/**
 * The producer every caller holds: each call goes to the cell of the org it names (`meta.orgId`), so an org's
 * jobs, flows and pipeline steps are all added in its own shard. One cell: that cell's producer itself.
 */
export function routeProducer(cells: readonly Cell[], cellOf: (orgId: string) => Cell): JobProducer {
  if (cells.length === 1) return cells[0].producer;
  return {
    // Validation and ids do not depend on the shard; any cell's producer prepares alike.
    prepare: (raw, meta, pathPrefix) => cellOf(meta.orgId).producer.prepare(raw, meta, pathPrefix),
    prepareChecked: (req, meta, pathPrefix) => cellOf(meta.orgId).producer.prepareChecked(req, meta, pathPrefix),
    add: (prepared, meta, o) => cellOf(meta.orgId).producer.add(prepared, meta, o),
    relane: (prepared, meta) => cellOf(meta.orgId).producer.relane(prepared, meta),
    enqueue: (raw, meta) => cellOf(meta.orgId).producer.enqueue(raw, meta),
    enqueueBulk: (raw, meta) => cellOf(meta.orgId).producer.enqueueBulk(raw, meta),
    prepareBulkChecked: (reqs, meta) => cellOf(meta.orgId).producer.prepareBulkChecked(reqs, meta),
    enqueueFlow: (parent, children, meta) => cellOf(meta.orgId).producer.enqueueFlow(parent, children, meta),
    admit: (orgId, jobs) => cellOf(orgId).producer.admit(orgId, jobs),
    giveBack: (orgId, reserved, jobs) => cellOf(orgId).producer.giveBack(orgId, reserved, jobs),
    refundFailedAdd: (orgId, reserved, err, o) => cellOf(orgId).producer.refundFailedAdd(orgId, reserved, err, o),
  };
}

/**
 * Reads, waits for and cancels jobs in the caller's org's cell (every call names the org). The long-poll
 * internals tests look at (`waiters`, `queueEvents`) are the first cell's; each cell has its own.
 */
export function routeJobService(cells: readonly Cell[], cellOf: (orgId: string) => Cell): JobService {
  if (cells.length === 1) return cells[0].jobs;
  return {
    ...cells[0].jobs,
    get: (orgId, id) => cellOf(orgId).jobs.get(orgId, id),
    wait: (orgId, id, waitMs) => cellOf(orgId).jobs.wait(orgId, id, waitMs),
    cancel: (orgId, id, read) => cellOf(orgId).jobs.cancel(orgId, id, read),
    endWaits: () => cells.forEach((c) => c.jobs.endWaits()),
  };
}
