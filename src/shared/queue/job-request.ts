import { z } from 'zod';

/** The body of `POST /v1/jobs` and each element of `POST /v1/jobs/bulk`. */
export const jobRequestSchema = z
  .object({
    agent: z.string().min(1).max(100),
    action: z.string().min(1).max(100),
    input: z.unknown(),
    options: z
      .object({
        // BullMQ: 1 is the highest priority; unset jobs run before any prioritised job of the same queue.
        priority: z.number().int().min(1).max(2_097_152).optional(),
        delayMs: z.number().int().min(0).max(30 * 24 * 3600 * 1000).optional(),
        idempotencyKey: z.string().min(1).max(200).optional(),
        model: z
          .string()
          .regex(/^[a-zA-Z0-9][a-zA-Z0-9._-]{0,63}$/, 'a model name of letters, digits, ".", "_" or "-"')
          .optional(),
        stream: z.boolean().optional(),
        tier: z
          .enum(['standard', 'flex', 'batch', 'priority'])
          .optional()
          .describe('Gemini service tier: standard (default), flex (about half price, best effort), batch (Batch Mode: half price, turnaround up to 24 h) or priority (premium)'),
        deadline: z
          .union([z.iso.datetime({ offset: true }), z.number().int().positive().max(30 * 24 * 3600)])
          .optional()
          .describe('When the answer is needed (ISO date-time, or seconds from now): agentq picks the cheapest tier that meets it'),
      })
      .strict()
      .optional(),
  })
  .strict();

export type JobRequest = z.infer<typeof jobRequestSchema>;

/** Each element is validated by `jobRequestSchema` on its own so errors name `jobs.N.field`. */
export const bulkRequestSchema = z.object({ jobs: z.array(z.unknown()).min(1).max(1000) }).strict();
