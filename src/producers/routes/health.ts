import type { Handler } from '../route-spec.js';

export type ReadinessChecks = Record<string, () => Promise<unknown>>;

export const healthz = (): Handler<object> => async () => ({ status: 'ok' });

/** How long /readyz waits for each dependency's answer. */
export const READINESS_TIMEOUT_MS = 1000;

/**
 * Ready only when every dependency answers within a second; otherwise 503 naming the ones that did not. A check
 * left behind keeps running: each must bound its own work (and not pile up), as the database's does.
 */
export const readyz =
  (checks: ReadinessChecks): Handler<object> =>
  async (_req, reply) => {
    const results = await Promise.all(
      Object.entries(checks).map(async ([name, check]) => {
        try {
          await Promise.race([check(), new Promise((_, reject) => setTimeout(() => reject(new Error('timeout')), READINESS_TIMEOUT_MS))]);
          return [name, 'ok'] as const;
        } catch (err) {
          return [name, err instanceof Error ? err.message : 'failed'] as const;
        }
      }),
    );
    const ready = results.every(([, status]) => status === 'ok');
    return reply.code(ready ? 200 : 503).send({ status: ready ? 'ready' : 'unavailable', checks: Object.fromEntries(results) });
  };
