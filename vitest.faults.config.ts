import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/faults/**/*.test.ts'],
    globalSetup: ['test/helpers/global-setup.ts'],
    testTimeout: 120_000,
    hookTimeout: 60_000,
    pool: 'forks',
    // Two files at a time: each fault test waits on events (logs, job states), never on wall-clock bounds,
    // and each owns its processes, Redis prefix and ports; the suite takes about half as long.
    maxWorkers: 2,
    fileParallelism: true,
    isolate: false,
  },
});
