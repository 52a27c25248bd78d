import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { FastifyReply, FastifyRequest } from 'fastify';
import type { AdminAuth } from '../admin-auth.js';
import type { Handler } from '../route-spec.js';
import type { usageAssetParam } from '../schemas/ops.js';
import { usageScopeOf } from '../usage-scope.js';
import type { UsageRouteDeps } from './usage.js';

export interface UsageDashboardDeps extends UsageRouteDeps {
  auth: AdminAuth;
}

const here = dirname(fileURLToPath(import.meta.url));
// Chart.js's own UMD build from node_modules, served by the app: the page works offline, with no CDN.
const chartJs = join(dirname(createRequire(import.meta.url).resolve('chart.js')), 'chart.umd.min.js');

/** Read once when the routes are built: small files that ship with the sources (src/producers/dashboard/). */
const ASSETS = {
  'usage.js': () => readFileSync(join(here, '../dashboard/usage.js')),
  'chart.umd.min.js': () => readFileSync(chartJs),
} as const;

/**
 * The dashboard's onRequest hook: 401 with a Basic challenge (what a browser can answer) without valid
 * credentials, 403 when `usageScopeOf` forbids, else the caller's scope on the request for the handlers.
 */
export const usageAccess = (auth: AdminAuth) => async (req: FastifyRequest, reply: FastifyReply) => {
  const who = await auth.identify(req.headers.authorization);
  if (!who) {
    return reply
      .code(401)
      .header('www-authenticate', 'Basic realm="agentq admin", charset="UTF-8"')
      .send({ error: 'authentication required: the operator token or an org admin API key' });
  }
  const scope = usageScopeOf(who);
  if (scope.kind === 'forbidden') return reply.code(403).send({ error: 'the usage dashboard needs the operator token or an org admin key' });
  req.usageScope = scope;
  req.log = req.log.child({ admin: who.via === 'token' ? 'token' : who.keyId });
};

export const usagePage = (): Handler<object> => {
  const html = readFileSync(join(here, '../dashboard/usage.html'));
  return async (_req, reply) => reply.header('content-type', 'text/html; charset=utf-8').header('cache-control', 'no-store').send(html);
};

export const usageAsset = (): Handler<{ params: typeof usageAssetParam }> => {
  const files = Object.fromEntries(Object.entries(ASSETS).map(([name, read]) => [name, read()]));
  return async (req, reply) => reply.header('content-type', 'text/javascript; charset=utf-8').send(files[req.params.file]);
};
