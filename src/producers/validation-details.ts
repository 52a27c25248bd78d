import type { FastifySchemaValidationError } from 'fastify';
import type { z } from 'zod';
import { zodDetails, type Detail } from '../shared/core/zod-details.js';

/** Where fastify says a schema failed, and how the API names that part of the request. */
const PARTS: Record<string, { label: string; prefix: string; unknown: string }> = {
  body: { label: 'body', prefix: '', unknown: 'field' },
  querystring: { label: 'query', prefix: 'query.', unknown: 'parameter' },
  params: { label: 'path', prefix: '', unknown: 'parameter' },
  headers: { label: 'headers', prefix: 'headers.', unknown: 'header' },
};

/**
 * A request-schema failure (raised by the zod type provider's validator) as the API's 400 body. The
 * provider keeps each zod issue's code and extra fields, so the issue is rebuilt and named exactly as
 * domain validation names its own (`zodDetails`): body paths bare (`options.priority`), query paths
 * `query.waitMs`, path parameters bare (`id`, `table`), headers `headers.last-event-id`.
 */
export function validationError(validation: FastifySchemaValidationError[], context: string | undefined): { error: string; details: Detail[] } {
  const part = PARTS[context ?? 'body'] ?? PARTS.body;
  const issues = validation.map((v) => ({
    ...(v.params as object),
    code: v.keyword,
    message: v.message ?? 'invalid',
    path: segments(v.instancePath),
  })) as unknown as z.core.$ZodIssue[];
  return { error: `invalid ${part.label}`, details: zodDetails({ issues }, part.prefix, part.unknown) };
}

/** `/a/0/b` -> ['a', '0', 'b']; the root is `/` (or empty). */
function segments(instancePath: string | undefined): string[] {
  const parts = (instancePath ?? '').split('/').slice(1);
  return parts.length === 1 && parts[0] === '' ? [] : parts;
}
