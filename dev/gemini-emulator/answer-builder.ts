import type { WireContent, WireGenerateRequest, WireUsage } from './gemini-wire.js';
import { contentWords } from './prompt-words.js';
import { sampleFromSchema } from './schema-sampler.js';
import { createRng, hash32 } from './seeded.js';
import { writeAnswer } from './text-writer.js';
import { countTokens, tokenize } from './tokenizer.js';
import { BadRequestError } from './bad-request.js';

/** What real Gemini charges for one image or file part; the emulator charges the same flat rate. */
export const MEDIA_PART_TOKENS = 258;

export interface Answer {
  text: string;
  finishReason: 'STOP' | 'MAX_TOKENS';
  usage: WireUsage;
}

export { BadRequestError };

const textsOf = (c: WireContent | undefined): string[] =>
  (c?.parts ?? []).flatMap((p) => (typeof p.text === 'string' && !p.thought ? [p.text] : []));

/** All prompt text, system instruction first: used for fault matching and for picking words. */
export function promptText(req: WireGenerateRequest): string {
  return [...textsOf(req.systemInstruction), ...(req.contents ?? []).flatMap(textsOf)].join('\n');
}

/** Prompt tokens: every text part counted on its own, plus a flat rate per media part. */
export function promptTokens(req: Pick<WireGenerateRequest, 'contents' | 'systemInstruction'>): number {
  const contents = [...(req.systemInstruction ? [req.systemInstruction] : []), ...(req.contents ?? [])];
  let n = 0;
  for (const c of contents) {
    for (const p of c.parts ?? []) {
      if (typeof p.text === 'string') n += countTokens(p.text);
      else if (p.inlineData || p.fileData) n += MEDIA_PART_TOKENS;
    }
  }
  return n;
}

export function usageFor(prompt: number, output: number): WireUsage {
  return {
    promptTokenCount: prompt,
    candidatesTokenCount: output,
    totalTokenCount: prompt + output,
    promptTokensDetails: [{ modality: 'TEXT', tokenCount: prompt }],
    candidatesTokensDetails: [{ modality: 'TEXT', tokenCount: output }],
  };
}

export function validateGenerateRequest(req: WireGenerateRequest): void {
  if (!Array.isArray(req.contents) || req.contents.length === 0) {
    throw new BadRequestError('* GenerateContentRequest.contents: contents is not specified');
  }
  const cfg = req.generationConfig ?? {};
  const jsonSchema = cfg.responseJsonSchema ?? cfg._responseJsonSchema;
  if (cfg.responseSchema !== undefined && jsonSchema !== undefined) {
    throw new BadRequestError('response_schema must not be set when response_json_schema is set.');
  }
  const mime = cfg.responseMimeType ?? 'text/plain';
  if ((cfg.responseSchema !== undefined || jsonSchema !== undefined) && mime !== 'application/json' && mime !== 'text/x.enum') {
    throw new BadRequestError(`* GenerateContentRequest.generation_config.response_mime_type: must be application/json or text/x.enum when a response schema is set, got ${mime}`);
  }
  if (cfg.responseSchema && typeof cfg.responseSchema === 'object' && '$schema' in cfg.responseSchema) {
    throw new BadRequestError(`Invalid JSON payload received. Unknown name "$schema" at 'generation_config.response_schema': Cannot find field.`);
  }
}

/** The text the emulator "writes" for a request: a pure function of the request body and model. */
function compose(model: string, req: WireGenerateRequest): string {
  const cfg = req.generationConfig ?? {};
  const seed = hash32(JSON.stringify([model, req.systemInstruction ?? null, req.contents, cfg.responseMimeType ?? null, cfg.responseSchema ?? null, cfg.responseJsonSchema ?? cfg._responseJsonSchema ?? null]));
  const rng = createRng(seed);
  const userTurns = (req.contents ?? []).filter((c) => c.role !== 'model');
  const lastUser = textsOf(userTurns[userTurns.length - 1]).join('\n');
  const fromLast = contentWords(lastUser);
  const words = fromLast.length > 0 ? fromLast : contentWords(promptText(req));
  const schema = cfg.responseJsonSchema ?? cfg._responseJsonSchema ?? cfg.responseSchema;
  if (cfg.responseMimeType === 'text/x.enum') {
    const values = (schema as { enum?: unknown[] } | undefined)?.enum;
    return Array.isArray(values) && values.length > 0 ? String(rng.pick(values)) : writeAnswer(words, rng, 1);
  }
  if (cfg.responseMimeType === 'application/json') {
    const value = schema === undefined ? { answer: writeAnswer(words, rng) } : sampleFromSchema(schema, words, rng);
    return JSON.stringify(value);
  }
  return writeAnswer(words, rng);
}

/** A strict prefix of the answer that never parses as JSON: what a cut-off model reply looks like. */
function malform(text: string): string {
  const cut = text.slice(0, Math.max(1, Math.floor(text.length / 2)));
  try {
    JSON.parse(cut);
    return `${cut}}`;
  } catch {
    return cut;
  }
}

/** Cuts after `max` tokens of the emulator's tokenizer, keeping the original spacing. */
function truncateTokens(text: string, max: number): string {
  let seen = 0;
  let end = 0;
  for (const m of text.matchAll(/[\p{L}\p{M}\p{N}_]+|[^\s\p{L}\p{M}\p{N}_]/gu)) {
    if (seen === max) break;
    seen++;
    end = (m.index ?? 0) + m[0].length;
  }
  return text.slice(0, end);
}

export function buildAnswer(model: string, req: WireGenerateRequest, opts: { malformed?: boolean } = {}): Answer {
  let text = compose(model, req);
  if (opts.malformed) text = malform(text);
  let finishReason: Answer['finishReason'] = 'STOP';
  const max = req.generationConfig?.maxOutputTokens;
  if (typeof max === 'number' && max > 0 && tokenize(text).length > max) {
    text = truncateTokens(text, max);
    finishReason = 'MAX_TOKENS';
  }
  return { text, finishReason, usage: usageFor(promptTokens(req), countTokens(text)) };
}

/** Splits an answer into the pieces a stream sends: 2-8 slices, never inside a surrogate pair. */
export function splitForStream(text: string): string[] {
  const chars = Array.from(text);
  if (chars.length < 2) return [text];
  const n = Math.min(8, Math.max(2, Math.ceil(chars.length / 48)));
  const out: string[] = [];
  for (let i = 0; i < n; i++) out.push(chars.slice(Math.floor((i * chars.length) / n), Math.floor(((i + 1) * chars.length) / n)).join(''));
  return out.filter((s) => s.length > 0);
}
