import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/faults/**/*.test.ts'],
    globalSetup: ['test/helpers/global-setup.ts'],
    testTimeout: 120_000,
    hookTimeout: 60_000,
    pool: 'forks',
    // One file at a time: these tests kill, stop and starve real processes, and the breaker case's timing
    // (which job becomes each half-open probe) is disturbed by a second file beside it on 2 cores.
    maxWorkers: 1,
    fileParallelism: false,
  },
});
