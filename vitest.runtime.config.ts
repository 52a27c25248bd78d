import { defineConfig } from 'vitest/config';
import base from './vitest.config.js';

/**
 * The Node 24 runtime subset (`npm run test:runtime`, run by .ci/run with Node 24 first on PATH; README "Node
 * versions"): the files that exercise the runtime-sensitive layers, and the production build, which runs here
 * only: the Docker image runs that build on Node 24, and in the unit suite its compile and start slowed the
 * files beside it on a busy machine (in .ci/run this subset runs after the fault suite, both beside the unit suite).
 */
export const RUNTIME_FILES = ['test/gemini-emulator.test.ts', 'test/api-jobs.test.ts', 'test/db-migrate.test.ts', 'test/production-build.test.ts'];

export default defineConfig({ test: { ...base.test, include: RUNTIME_FILES, exclude: ['node_modules/**'] } });
