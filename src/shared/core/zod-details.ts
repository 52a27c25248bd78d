import type { z } from 'zod';
import { ValidationError } from './errors.js';

/** Zod issues as the API's `details: [{ path, message }]`, paths dotted (`input.startup.name`). */
export function zodDetails(error: z.ZodError, prefix = ''): Array<{ path: string; message: string }> {
  return error.issues.map((issue) => ({
    path: prefix + (issue.path.length ? issue.path.map(String).join('.') : '(root)'),
    message: issue.message,
  }));
}

/** Parses one part of a request; failures are a ValidationError (HTTP 400) naming each field. */
export function parseRequest<T extends z.ZodType>(schema: T, value: unknown, where: 'body' | 'path' | 'query'): z.output<T> {
  const result = schema.safeParse(value);
  if (!result.success) throw new ValidationError(`invalid ${where}`, zodDetails(result.error, where === 'query' ? 'query.' : ''));
  return result.data;
}
