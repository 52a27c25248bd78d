import type { RedisClient } from '../../src/shared/infra/lua.js';

/**
 * `redis` with a hook run before each transaction's EXEC (`multi().exec()`), the rest passed through: a test holds
 * a service between its reads and its transaction's writes (the window a race needs) by giving the service this
 * client. `beforeExec` runs before every EXEC; it keeps its own state to act once.
 */
export function hookExec(redis: RedisClient, beforeExec: () => Promise<void>): RedisClient {
  return new Proxy(redis, {
    get(target, prop) {
      if (prop === 'multi') {
        return (...a: Parameters<RedisClient['multi']>) => {
          const tx = target.multi(...a);
          const exec = tx.exec.bind(tx);
          tx.exec = (async () => {
            await beforeExec();
            return exec();
          }) as typeof tx.exec;
          return tx;
        };
      }
      const v = Reflect.get(target, prop, target) as unknown;
      return typeof v === 'function' ? (v as (...x: unknown[]) => unknown).bind(target) : v;
    },
  }) as RedisClient;
}
