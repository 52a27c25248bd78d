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
    // Three files at a time: most of a fault test is waiting (for a lock to lapse, a stalled check, an
    // outage to end), so files beside it cut the suite's time (179 s of tests ran in 105 s two at a time).
    // Each file has its own queue prefix, processes and fault scripts; none may depend on the machine being idle.
    maxWorkers: 3,
    // As in the unit suite: files share a worker's module graph (the stack is imported once per worker, not
    // once per file: most of a fault file's CPU before its first test). Files leave no process-wide state.
    isolate: false,
  },
});
