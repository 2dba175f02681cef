import { defineConfig } from 'vitest/config';

// End-to-end tests share one real herald node (started in globalSetup) and
// run one file at a time: the machine has two cores, shared with the node.
export default defineConfig({
  test: {
    include: ['test/e2e/**/*.test.ts'],
    environment: 'node',
    globalSetup: ['test/e2e/global-setup.ts'],
    fileParallelism: false,
    testTimeout: 30_000,
    hookTimeout: 60_000,
  },
});
