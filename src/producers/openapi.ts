import { readFileSync } from 'node:fs';
import fastifySwagger from '@fastify/swagger';
import fastifySwaggerUi from '@fastify/swagger-ui';
import type { FastifyInstance } from 'fastify';
import { createJsonSchemaTransform } from 'fastify-type-provider-zod';

function packageVersion(): string {
  try {
    return (JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version: string }).version;
  } catch {
    return '0.0.0';
  }
}

/** Where the browsable docs page (and its assets) is mounted: the docs plugin's routes, not the route table's. */
export const DOCS_PATH = '/docs';

/**
 * Collects every route registered after it (swagger's onRoute hook) into an OpenAPI 3.1 document, built
 * from the routes' zod schemas. Register before any route.
 */
export async function registerOpenApi(app: FastifyInstance): Promise<void> {
  await app.register(fastifySwagger, {
    openapi: {
      openapi: '3.1.0',
      info: {
        title: 'agentq',
        version: packageVersion(),
        description:
          'A job queue for AI agent work. Errors are JSON `{ error, details?: [{ path, message }] }`; `details` names each bad field (`input.startup.name`, `query.waitMs`).',
      },
      components: {
        securitySchemes: {
          bearer: {
            type: 'http',
            scheme: 'bearer',
            description: 'An API key (`aq_…`): a member or org-admin key belongs to one org; an operator key to none. The ADMIN_TOKEN is an operator credential. Each operation names its role in `x-required-role`.',
          },
          basic: { type: 'http', scheme: 'basic', description: 'Operator routes from a browser: user `admin` and the ADMIN_TOKEN, or an operator API key as the password.' },
        },
      },
    },
    // The docs page's own routes are hidden by the UI plugin; nothing else is skipped.
    transform: createJsonSchemaTransform({ skipList: [] }),
  });
}

/** The docs page at /docs, served from the UI plugin's bundled assets (no network needed). */
export async function registerDocsPage(app: FastifyInstance): Promise<void> {
  await app.register(fastifySwaggerUi, { routePrefix: DOCS_PATH, uiConfig: { deepLinking: true } });
}
