import { defineConfig } from 'vitest/config';
import SlowFirstSequencer from './test/helpers/slow-first-sequencer.js';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    // The fault suite has its own config; the production build runs in the Node 24 subset only
    // (vitest.runtime.config.ts: the image's runtime).
    exclude: ['test/faults/**', 'test/production-build.test.ts', 'node_modules/**'],
    globalSetup: ['test/helpers/global-setup.ts'],
    // Upper bounds for a test that hangs, not expected durations: a machine loaded to several times its
    // cores stretches a stack's start to a minute.
    testTimeout: 60_000,
    hookTimeout: 180_000,
    pool: 'forks',
    sequence: { sequencer: SlowFirstSequencer },
    maxWorkers: 2,
    // Files share a worker's module graph: importing the stack (fastify, BullMQ, the SDK, the features)
    // once per worker instead of once per file takes a third off the suite's CPU time, which is what a
    // busy machine runs short of. Files must therefore leave no process-wide state behind (env stubs are
    // undone, tracing is shut down, every stack closed).
    isolate: false,
    reporters: ['default'],
  },
});
