import { z } from 'zod';
import { defineAction, defineAgent } from './define-agent.js';
import { DATA_NOTICE, dataBlock, startupProfileSchema } from './startup-profile.js';

const PROFILE_FIELDS = startupProfileSchema.keyof().options;

const extractInput = z.object({
  companyName: z.string().min(1).max(200).optional(),
  website: z.string().min(1).max(500).optional(),
  answers: z
    .array(z.object({ question: z.string().min(1).max(500), answer: z.string().max(4000) }))
    .min(1)
    .max(50),
  notes: z.string().max(4000).optional(),
});

/**
 * `{ startup, ... }` on purpose: the whole output parses as `RiskAnalyzer.analyze_risks` and
 * `TaskGenerator.wizard_generate_tasks` input (zod objects drop the extra keys), so the wizard pipeline
 * can hand it on unchanged.
 */
const extractOutput = z.object({
  startup: startupProfileSchema,
  missingFields: z.array(z.enum(PROFILE_FIELDS)).max(PROFILE_FIELDS.length).describe('Profile fields the answers did not cover'),
  confidence: z.number().min(0).max(1).describe('How well the answers support the profile as a whole'),
});

interface ExtractExtras {
  companyName?: string;
  website?: string;
}

export const profileExtractor = defineAgent({
  name: 'ProfileExtractor',
  description: 'Turns the onboarding wizard\'s free-form answers into a structured startup profile.',
  actions: {
    wizard_extract_startup: defineAction({
      description: 'Structured startup profile (and what is missing from it) from the onboarding wizard answers.',
      input: extractInput,
      output: extractOutput,
      promptVersion: 1,
      model: 'fast',
      prompt: (input) => ({
        system: [
          'You extract a structured startup profile from a founder\'s onboarding answers.',
          'Record only what the answers state or clearly imply; leave a field out rather than guess, and list it',
          'in missingFields. Convert amounts to US dollars per month where the field says so (e.g. "$40k ARR"',
          'is about 3333 monthly revenue). stage is one of: idea, pre_seed, seed, series_a, series_b, growth.',
          'Keep description to at most five sentences in the founder\'s own terms.',
          DATA_NOTICE,
        ].join('\n'),
        user: [
          'Extract the profile.',
          dataBlock('company', { name: input.companyName ?? null, website: input.website ?? null }),
          dataBlock('answers', input.answers),
          input.notes ? dataBlock('notes', input.notes) : '',
          'If no company name is given anywhere, use "Unnamed startup" and list "name" as missing.',
        ]
          .filter(Boolean)
          .join('\n\n'),
        extras: { companyName: input.companyName, website: input.website } satisfies ExtractExtras,
      }),
      // What the founder typed into the dedicated fields beats whatever the model read from the answers.
      finalize: (output, extras) => {
        const x = extras as ExtractExtras;
        const startup = { ...output.startup, ...(x.companyName ? { name: x.companyName } : {}), ...(x.website ? { website: x.website } : {}) };
        const known = new Set(Object.keys(startup).filter((k) => startup[k as keyof typeof startup] !== undefined));
        return { ...output, startup, missingFields: output.missingFields.filter((f) => f === 'name' ? !x.companyName : !known.has(f)) };
      },
    }),
  },
});
