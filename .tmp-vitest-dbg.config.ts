import { defineConfig } from 'vitest/config';
export default defineConfig({
  test: {
    root: '/work/main',
    include: ['/tmp/dbexp/dbg/*.test.ts', 'test/db-*.test.ts', 'test/rag-knowledge.test.ts', 'test/rag-match-documents.test.ts', 'test/semantic-cache.test.ts', 'test/cli-*.test.ts'],
    globalSetup: ['/work/main/test/helpers/global-setup.ts'],
    testTimeout: 30_000, hookTimeout: 60_000, pool: 'forks', maxWorkers: 2,
  },
});
