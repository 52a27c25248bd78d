import type { z } from 'zod';

/** Zod issues as the API's `details: [{ path, message }]`, paths dotted (`input.startup.name`). */
export function zodDetails(error: z.ZodError, prefix = ''): Array<{ path: string; message: string }> {
  return error.issues.map((issue) => ({
    path: prefix + (issue.path.length ? issue.path.map(String).join('.') : '(root)'),
    message: issue.message,
  }));
}
