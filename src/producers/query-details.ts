import type { z } from 'zod';
import { zodDetails } from '../shared/core/zod-details.js';

/** Like zodDetails, but an unknown parameter is named (`query.since`) instead of reported on the root. */
export function paramDetails(error: z.ZodError, prefix: string): Array<{ path: string; message: string }> {
  return error.issues.flatMap((issue) =>
    issue.code === 'unrecognized_keys'
      ? issue.keys.map((key) => ({ path: prefix + [...issue.path.map(String), key].join('.'), message: 'unknown parameter' }))
      : zodDetails({ issues: [issue] } as z.ZodError, prefix),
  );
}
