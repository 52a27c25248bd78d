import { defineConfig } from 'vitest/config';
import SlowFirstSequencer from './test/helpers/slow-first-sequencer.js';

export default defineConfig({
  test: {
    include: ['test/faults/**/*.test.ts'],
    globalSetup: ['test/helpers/global-setup.ts'],
    testTimeout: 120_000,
    hookTimeout: 60_000,
    pool: 'forks',
    sequence: { sequencer: SlowFirstSequencer },
    // Two files at a time: most of a fault test is waiting (for a lock to lapse, a stalled check, an
    // outage to end), so a second file beside it halves the suite's time. Each file has its own queue
    // prefix, processes and fault scripts; none may depend on the machine being idle.
    maxWorkers: 2,
    // As in the unit suite: files share a worker's module graph (the stack is imported once per worker, not
    // once per file: most of a fault file's CPU before its first test). Files leave no process-wide state.
    isolate: false,
  },
});
