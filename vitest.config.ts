import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    exclude: ['test/faults/**', 'node_modules/**'],
    globalSetup: ['test/helpers/global-setup.ts'],
    testTimeout: 30_000,
    hookTimeout: 60_000,
    pool: 'forks',
    maxWorkers: 2,
    // Files share a worker's module graph (each stack, key and queue prefix is per file anyway): the app is
    // loaded once per worker instead of once per file (the suite ran in 170 s instead of 245 s).
    isolate: false,
    reporters: ['default'],
  },
});
