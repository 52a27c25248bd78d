import { DelayedError, WaitingChildrenError, WaitingError, type Job, type Worker } from 'bullmq';
import type { Logger } from '../shared/core/logger.js';

/** A job its processor left with one of these is in Redis already (delayed, waiting): BullMQ emits neither completed nor failed for it. */
const leftInRedis = (err: unknown) => err instanceof DelayedError || err instanceof WaitingChildrenError || err instanceof WaitingError;

export interface Taken {
  running: boolean;
  lockLost: boolean;
}

/**
 * The jobs a BullMQ worker took and whose outcome is not yet recorded (its completed / failed event, emitted once
 * the outcome is in Redis): a shutdown waits for these without
 * BullMQ's graceful close, which cannot be forced once started (its close(true) returns the graceful close
 * already under way) and waits for its blocking connection to end, which never happens while that connection
 * is reconnecting to a Redis that is down.
 */
export function createInFlight() {
  const jobs = new Map<string, Taken>();
  const idle: Array<() => void> = [];
  const settled = (id: string | undefined) => {
    if (id && jobs.delete(id) && jobs.size === 0) idle.splice(0).forEach((resolve) => resolve());
  };
  const begin = (job: Job): Taken => {
    const taken: Taken = { running: true, lockLost: false };
    jobs.set(job.id!, taken);
    return taken;
  };
  const end = (job: Job, taken: Taken, failure?: { err: unknown }): void => {
    const id = job.id!;
    taken.running = false;
    if ((taken.lockLost || (failure !== undefined && leftInRedis(failure.err))) && jobs.get(id) === taken) settled(id);
  };
  return {
    size: () => jobs.size,
    /** Runs one attempt's processor as a job in flight until BullMQ records its outcome. */
    async run<R>(job: Job, processor: () => Promise<R>): Promise<R> {
      const taken = begin(job);
      let failure: { err: unknown } | undefined;
      try {
        return await processor();
      } catch (err) {
        failure = { err };
        throw err;
      } finally {
        end(job, taken, failure);
      }
    },
    /**
     * `run` in two halves, for a caller that wraps the processor in an async function of its own anyway (the agent
     * worker): one async frame and closure per job fewer. `begin` before the processor starts; `end` once it has
     * settled, with what it threw (`failure`) if it threw.
     */
    begin,
    end,
    /** Settles jobs on `worker`'s events (call once, before it runs jobs). */
    attach(worker: Worker): void {
      worker.on('completed', (job) => settled(job.id));
      worker.on('failed', (job) => settled(job?.id));
      // A job whose lock BullMQ could not renew has its outcome refused (the stalled check hands it to another
      // worker), and BullMQ then emits neither completed nor failed for it: done once its processor returns.
      worker.on('lockRenewalFailed', (ids) => {
        for (const id of ids) {
          const taken = jobs.get(id);
          if (taken?.running) taken.lockLost = true;
          else settled(id);
        }
      });
    },
    /** True once no job is in flight, false if some still are after `graceMs`. */
    async drained(graceMs: number): Promise<boolean> {
      if (jobs.size === 0) return true;
      let timer: NodeJS.Timeout | undefined;
      const drained = new Promise<true>((resolve) => idle.push(() => resolve(true)));
      const timeout = new Promise<false>((resolve) => (timer = setTimeout(() => resolve(false), graceMs)));
      try {
        return await Promise.race([drained, timeout]);
      } finally {
        clearTimeout(timer);
      }
    },
  };
}

export type InFlight = ReturnType<typeof createInFlight>;

/**
 * How every agentq BullMQ worker stops: no new fetch, the jobs in flight finish within `graceMs`, then a forced
 * close, which never waits on a blocked fetch (a graceful one waits on its connection: forever after a cluster
 * failover, or while Redis is down). Jobs cut off keep their lock until it lapses and are then recovered by the
 * stalled-job check elsewhere. A fetch already blocked may still take one job after the jobs here are done;
 * that job is not run here, and the stalled check gives it back to the queue once its lock lapses.
 */
export async function closeAfterGrace(worker: Worker, inFlight: Pick<InFlight, 'drained' | 'size'>, graceMs: number, logger: Logger): Promise<void> {
  await worker.pause(true);
  if (!(await inFlight.drained(graceMs))) logger.warn({ queue: worker.name, graceMs, running: inFlight.size() }, 'shutdown grace period over; closing with jobs still running');
  await worker.close(true);
}
