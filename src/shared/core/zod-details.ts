import type { z } from 'zod';

export interface Detail {
  path: string;
  message: string;
}

/**
 * Zod issues as the API's `details: [{ path, message }]`, paths dotted (`input.startup.name`). An unknown
 * key is named on its own path (`options.attempts`, `query.since`) rather than reported on its parent, so
 * every detail points at the field to fix; `unknown` is the noun used for it ("field", "parameter").
 */
export function zodDetails(error: { issues: readonly z.core.$ZodIssue[] }, prefix = '', unknown = 'field'): Detail[] {
  return error.issues.flatMap((issue) => {
    const at = issue.path.map(String);
    if (issue.code === 'unrecognized_keys') {
      return issue.keys.map((key) => ({ path: prefix + [...at, key].join('.'), message: `unknown ${unknown} "${key}"` }));
    }
    return [{ path: prefix + (at.length ? at.join('.') : '(root)'), message: issue.message }];
  });
}
