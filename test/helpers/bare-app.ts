import { buildApp, type AppDeps } from '../../src/producers/app.js';
import { createLogger } from '../../src/shared/core/logger.js';

/**
 * The API built with stand-ins for everything a route would use (no key verifies, no agents, no producer): for tests
 * of the app's own wiring (route checks, request logging, tracing hooks) with plugins of their own.
 */
export function buildBareApp(over: Partial<AppDeps> = {}) {
  return buildApp({
    logger: createLogger({ level: 'silent' }),
    bodyLimit: 1024,
    keys: { verify: async () => null },
    agents: { list: () => [] } as never,
    readiness: {},
    producer: {} as never,
    jobs: { endWaits: () => undefined } as never,
    longPollMaxMs: 1000,
    enqueueDeadlineMs: 1000,
    ...over,
  } as AppDeps);
}
