import type { GenerateContentResponse, SafetyRating } from '@google/genai';
import type { BilledCall } from '../../core/types.js';
import { LlmError } from './llm-errors.js';

/**
 * Finish reasons that are a refusal of this prompt by the model or its filters (Gemini's FinishReason enum):
 * another try would be refused the same way. MAX_TOKENS is not one: a truncated answer stays a retryable
 * EBADOUTPUT, since another sample (default temperature) often ends in time where this one ran on or looped.
 * OTHER and the tool-call reasons stay retryable too: they name no property of the prompt.
 */
const REFUSALS: ReadonlySet<string> = new Set([
  'SAFETY',
  'RECITATION',
  'LANGUAGE',
  'BLOCKLIST',
  'PROHIBITED_CONTENT',
  'SPII',
  'IMAGE_SAFETY',
  'IMAGE_PROHIBITED_CONTENT',
  'IMAGE_RECITATION',
]);

/**
 * What an answer's candidates and prompt feedback say, gathered over a stream's chunks (the last ones carry it).
 * A RECITATION stop's `citationMetadata` (the sources its withheld text was attributed to), like the one a
 * stream's text chunks carry for the stretches they recite, is deliberately not read: its byte offsets point into
 * an answer agentq never received whole, and its URIs, third-party addresses of any number and length, would grow the failed reason BullMQ and the DLQ keep without telling an operator more than
 * the finishReason does (the model recited, the same prompt would again, no retry helps).
 */
export interface AnswerEnd {
  candidates: number;
  finishReason?: string;
  blockReason?: string;
  /** Harm categories whose rating says `blocked: true`, the prompt's (`promptFeedback`) or the candidate's. */
  blockedCategories?: string[];
  /** The candidate's `finishMessage`. @google/genai 2.32 drops it from Gemini API answers (it copies it on Vertex only). */
  finishMessage?: string;
}

/** A HarmCategory name: the text that goes into a failed reason is an enum value, whatever a body holds. */
const CATEGORY = /^[A-Z][A-Z0-9_]{0,63}$/;
const MAX_CATEGORIES = 8;
const MAX_FINISH_MESSAGE = 200;

function blockedIn(ratings: SafetyRating[] | undefined, into: string[]): string[] {
  for (const r of ratings ?? []) {
    const c = r?.blocked === true ? r.category : undefined;
    if (typeof c === 'string' && CATEGORY.test(c) && !into.includes(c) && into.length < MAX_CATEGORIES) into.push(c);
  }
  return into;
}

export function answerEndOf(res: GenerateContentResponse, seen: AnswerEnd = { candidates: 0 }): AnswerEnd {
  const candidate = res.candidates?.[0];
  const finishReason = candidate?.finishReason ?? seen.finishReason;
  const blockReason = res.promptFeedback?.blockReason ?? seen.blockReason;
  // The prompt's feedback comes in a stream's first chunk only, a stop's ratings in its last: gathered over both.
  const blocked = blockedIn(candidate?.safetyRatings, blockedIn(res.promptFeedback?.safetyRatings, [...(seen.blockedCategories ?? [])]));
  const said = typeof candidate?.finishMessage === 'string' ? candidate.finishMessage.replace(/\s+/g, ' ').trim() : '';
  const finishMessage = said ? (said.length > MAX_FINISH_MESSAGE ? `${said.slice(0, MAX_FINISH_MESSAGE - 1)}…` : said) : seen.finishMessage;
  return {
    candidates: seen.candidates + (res.candidates?.length ?? 0),
    ...(finishReason ? { finishReason } : {}),
    ...(blockReason ? { blockReason } : {}),
    ...(blocked.length > 0 ? { blockedCategories: blocked } : {}),
    ...(finishMessage ? { finishMessage } : {}),
  };
}

/**
 * An answer that never says it finished (EPROVIDER, retryable), undefined otherwise. Gemini ends every answer
 * with a candidate carrying the finishReason: a plain call's one body, a stream's last chunk (with the usage), a
 * batch's inline response. Without one, nothing says the model finished, whatever the text: no answer. EPROVIDER
 * rather than ENETWORK: the transport delivered a well-formed ending, and what failed is the provider's answer;
 * retryable and counted against the model's breaker, as a 5xx is, and billed for the usage it carries (`usage`),
 * as a refusal or bad output is. An answer of usage with no candidate and no reason stays a refusal (`refusalOf`).
 */
export function unfinishedOf(end: AnswerEnd, usage: boolean, message: string, opts: { model: string; billed: BilledCall }): LlmError | undefined {
  if (end.finishReason || end.blockReason || (end.candidates === 0 && usage)) return undefined;
  return new LlmError('EPROVIDER', message, { model: opts.model, ...(usage ? { billed: opts.billed } : {}) });
}

/**
 * A refusal (EBLOCKED, not retryable, not the provider's failure): the prompt blocked, a candidate stopped by a
 * filter, or no candidate at all (Gemini returns none only for a prompt it would not answer). Undefined otherwise.
 * Its message is what the failed reason and the DLQ entry keep (BullMQ stores only the message), so it names the
 * blocked categories and Gemini's finishMessage for an operator; the prompt's text is never in it. `streamedChars`,
 * the length of the text a stream already handed to its caller's onText before the stop, is said too (its count,
 * never the text): the job's stream clients saw a partial answer that this error withdraws.
 */
export function refusalOf(end: AnswerEnd, what: string, opts: { model: string; billed: BilledCall; streamedChars?: number }): LlmError | undefined {
  const { streamedChars, ...rest } = opts;
  const streamed = streamedChars !== undefined && streamedChars > 0;
  const fields = {
    ...rest,
    ...(streamed ? { streamedChars } : {}),
    ...(end.finishReason ? { finishReason: end.finishReason } : {}),
    ...(end.blockReason ? { blockReason: end.blockReason } : {}),
    ...(end.blockedCategories ? { blockedCategories: end.blockedCategories } : {}),
    ...(end.finishMessage && !end.blockReason ? { finishMessage: end.finishMessage } : {}),
  };
  const categories = end.blockedCategories ? `; blocked categories ${end.blockedCategories.join(', ')}` : '';
  const partial = streamed ? `; ${streamedChars} chars already streamed to the caller` : '';
  if (end.blockReason) return new LlmError('EBLOCKED', `${what}: prompt blocked (${end.blockReason}${categories}${partial})`, fields);
  if (end.finishReason && REFUSALS.has(end.finishReason)) {
    const message = end.finishMessage ? `; finishMessage ${JSON.stringify(end.finishMessage)}` : '';
    return new LlmError('EBLOCKED', `${what}: answer stopped (finishReason ${end.finishReason}${categories}${message}${partial})`, fields);
  }
  if (end.candidates === 0) return new LlmError('EBLOCKED', `${what}: no candidate in the answer${streamed ? ` (${streamedChars} chars already streamed to the caller)` : ''}`, fields);
  return undefined;
}
