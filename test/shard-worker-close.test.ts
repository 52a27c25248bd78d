import { afterAll, describe, expect, it } from 'vitest';
import { startStack, type Stack } from './helpers/stack.js';

/**
 * The shards' workers of one process share one command connection (worker-service.ts `shared`), and close
 * together: each close waits for its fair gate and dispatch loop while that connection is reachable
 * (connection.ts `whileReachable`). Twelve of them at once added twelve 'reconnecting' listeners to it, and Node
 * warned of a listener leak (MaxListenersExceededWarning, "11 reconnecting listeners") at every shutdown.
 */
describe('closing the workers of 12 queue shards', () => {
  let s: Stack | undefined;
  const warnings: Error[] = [];
  const onWarning = (w: Error) => void warnings.push(w);
  afterAll(async () => {
    process.off('warning', onWarning);
    await s?.close();
  });

  it('adds no listener per shard to the shared connection: no MaxListenersExceededWarning', async () => {
    s = await startStack({ QUEUE_SHARDS: '12' }, { worker: true });
    process.on('warning', onWarning);
    const closing = s;
    s = undefined;
    await closing.close();
    // Node emits the warning on the next tick after the listener that crossed the limit was added.
    await new Promise<void>((resolve) => setImmediate(resolve));
    expect(warnings.filter((w) => w.name === 'MaxListenersExceededWarning').map((w) => w.message)).toEqual([]);
  }, 90_000);
});
