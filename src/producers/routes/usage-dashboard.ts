import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Handler } from '../route-spec.js';
import type { usageAssetParam } from '../schemas/ops.js';
import type { UsageRouteDeps } from './usage.js';

export type UsageDashboardDeps = UsageRouteDeps;

const here = dirname(fileURLToPath(import.meta.url));
// Chart.js's own UMD build from node_modules, served by the app: the page works offline, with no CDN.
const chartJs = join(dirname(createRequire(import.meta.url).resolve('chart.js')), 'chart.umd.min.js');

/** Read once when the routes are built: small files that ship with the sources (src/producers/dashboard/). */
const ASSETS = {
  'usage.js': () => readFileSync(join(here, '../dashboard/usage.js')),
  'chart.umd.min.js': () => readFileSync(chartJs),
} as const;

export const usagePage = (): Handler<object> => {
  const html = readFileSync(join(here, '../dashboard/usage.html'));
  return async (_req, reply) => reply.header('content-type', 'text/html; charset=utf-8').header('cache-control', 'no-store').send(html);
};

export const usageAsset = (): Handler<{ params: typeof usageAssetParam }> => {
  const files = Object.fromEntries(Object.entries(ASSETS).map(([name, read]) => [name, read()]));
  return async (req, reply) => reply.header('content-type', 'text/javascript; charset=utf-8').send(files[req.params.file]);
};
