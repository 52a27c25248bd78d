import type { WireUsage } from './gemini-wire.js';
import { countTokens } from './tokenizer.js';
import { chunkUsage, promptUsage } from './usage-model.js';

/**
 * A scripted refusal (fault `refuse`). Exactly one of `finishReason`, `blockReason`, `noCandidate`;
 * `category` names the harm category whose rating blocked (default: HARM_CATEGORY_DANGEROUS_CONTENT for SAFETY,
 * none for the other reasons, whose filters are not the per-category classifier); `finishMessage` (a candidate's
 * only) is sent on the candidate as Gemini sends it for some stops; `citations` (a RECITATION stop's only) are the
 * sources its `citationMetadata` names instead of the default one, none when empty.
 */
export interface Refusal {
  finishReason?: string;
  blockReason?: string;
  noCandidate?: boolean;
  category?: string;
  finishMessage?: string;
  citations?: CitationSource[];
}

/**
 * One source of a candidate's `citationMetadata.citationSources` (generativelanguage v1beta CitationSource, every
 * field optional): the byte range of the answer it is attributed to (end exclusive), its URI and its license.
 * @google/genai reads the list into `citationMetadata.citations` (citationMetadataFromMldev); `citations` is also
 * Vertex AI's wire name, never the Gemini API's.
 */
export interface CitationSource {
  startIndex?: number;
  endIndex?: number;
  uri?: string;
  license?: string;
}

/** The harm categories the Gemini API rates text in (HarmCategory); the first four are the ones it always rates. */
export const HARM_CATEGORIES = ['HARM_CATEGORY_SEXUALLY_EXPLICIT', 'HARM_CATEGORY_HATE_SPEECH', 'HARM_CATEGORY_HARASSMENT', 'HARM_CATEGORY_DANGEROUS_CONTENT', 'HARM_CATEGORY_CIVIC_INTEGRITY'] as const;
const RATED = HARM_CATEGORIES.slice(0, 4);
const DEFAULT_SAFETY_CATEGORY = 'HARM_CATEGORY_DANGEROUS_CONTENT';
const KEYS = new Set(['finishReason', 'blockReason', 'noCandidate', 'category', 'finishMessage', 'citations']);
const CITATION_KEYS = new Set(['startIndex', 'endIndex', 'uri', 'license']);
const MAX_CITATIONS = 16;
/** The source a RECITATION stop names unless the fault names others: synthetic, as the emulator's answers are. */
export const DEFAULT_CITATION_URI = 'https://example.com/emulator/recited-source';

const named = (v: unknown): v is string => typeof v === 'string' && v !== '';

/** What is wrong with a scripted refusal, in the words of the error the fault route answers; undefined when fine. */
export function refusalProblem(r: unknown): string | undefined {
  if (!r || typeof r !== 'object' || Array.isArray(r)) return 'fault refuse must be an object';
  const o = r as Record<string, unknown>;
  const unknown = Object.keys(o).filter((k) => !KEYS.has(k));
  if (unknown.length > 0) return `fault refuse has unknown field(s) ${unknown.join(', ')} (it takes ${[...KEYS].join(', ')})`;
  if ([named(o.finishReason), named(o.blockReason), o.noCandidate === true].filter(Boolean).length !== 1) {
    return 'fault refuse must name exactly one of finishReason, blockReason (non-empty strings) or noCandidate: true';
  }
  if (o.category !== undefined && !(HARM_CATEGORIES as readonly unknown[]).includes(o.category)) return `fault refuse.category must be one of ${HARM_CATEGORIES.join(', ')}`;
  if (o.category !== undefined && o.noCandidate === true) return 'fault refuse.category needs a finishReason or a blockReason (no candidate has no ratings)';
  if (o.finishMessage !== undefined && !(named(o.finishMessage) && named(o.finishReason))) return 'fault refuse.finishMessage must be a non-empty string, with a finishReason (it is a candidate\'s field)';
  if (o.citations !== undefined) return citationsProblem(o.citations, o.finishReason);
  return undefined;
}

function citationsProblem(c: unknown, finishReason: unknown): string | undefined {
  if (finishReason !== 'RECITATION') return 'fault refuse.citations needs finishReason RECITATION (the stop whose candidate carries them)';
  if (!Array.isArray(c) || c.length > MAX_CITATIONS) return `fault refuse.citations must be an array of at most ${MAX_CITATIONS} sources`;
  for (const [i, src] of c.entries()) {
    const at = `fault refuse.citations[${i}]`;
    if (!src || typeof src !== 'object' || Array.isArray(src)) return `${at} must be an object`;
    const f = src as Record<string, unknown>;
    const unknown = Object.keys(f).filter((k) => !CITATION_KEYS.has(k));
    if (unknown.length > 0) return `${at} has unknown field(s) ${unknown.join(', ')} (it takes ${[...CITATION_KEYS].join(', ')})`;
    for (const k of ['startIndex', 'endIndex'] as const) {
      if (f[k] !== undefined && !(Number.isInteger(f[k]) && (f[k] as number) >= 0)) return `${at}.${k} must be a non-negative integer (a byte offset)`;
    }
    if (typeof f.startIndex === 'number' && typeof f.endIndex === 'number' && f.startIndex > f.endIndex) return `${at}.startIndex must not be past its endIndex`;
    for (const k of ['uri', 'license'] as const) {
      if (f[k] !== undefined && !named(f[k])) return `${at}.${k} must be a non-empty string`;
    }
  }
  return undefined;
}

/**
 * A RECITATION stop's sources: the fault's, or one that the stretch of the answer Gemini withheld is attributed to
 * (byte offsets into the answer, end exclusive): what follows the text a stream sent, or the whole answer.
 */
function citationMetadata(r: Refusal, text: string, streamed: string[] | undefined): Record<string, unknown> {
  let sources = r.citations;
  if (!sources) {
    const end = Buffer.byteLength(text);
    const sent = Buffer.byteLength((streamed ?? []).join(''));
    sources = [{ startIndex: sent < end ? sent : 0, endIndex: end, uri: DEFAULT_CITATION_URI }];
  }
  // proto3 JSON leaves out an empty repeated field, and so the message holding only it.
  return sources.length > 0 ? { citationMetadata: { citationSources: sources } } : {};
}

/** Gemini's ratings of the text: every rated category, the one that blocked flagged `blocked: true`. */
function safetyRatings(category: string) {
  const categories = (RATED as readonly string[]).includes(category) ? RATED : [...RATED, category];
  return categories.map((c) => (c === category ? { category: c, probability: 'HIGH', blocked: true } : { category: c, probability: 'NEGLIGIBLE' }));
}

/**
 * A refusal as the Gemini API sends it (the body of a generate call, the one event of a stream, a batch's inline
 * response). From captured responses (xtekky/gpt4free#2341: a SAFETY candidate with no content; vercel/ai#4236 and
 * #19758, google-gemini/deprecated-generative-ai-python#276: blocked prompts with only the two token counts;
 * google-gemini/cookbook Safety_REST.ipynb: a SAFETY block's ratings; FirebaseExtended/vertexai-sdk-test-data: a
 * RECITATION stop with no content, a finishMessage) and the REST reference (SafetyRating.blocked, PromptFeedback):
 * - a candidate stopped by a filter has no `content` at all, only `finishReason`, `index`, the `safetyRatings` when a
 *   category blocked, and a `finishMessage` when Gemini gives one; the usage counts the prompt only (proto3 JSON omits
 *   a zero `candidatesTokenCount`); `modelVersion` and `responseId` as in any answer;
 * - a RECITATION stop also carries `citationMetadata.citationSources` ({ startIndex, endIndex, uri, license? }: the
 *   generativelanguage v1beta CitationMetadata; FirebaseExtended/vertexai-sdk-test-data googleai
 *   streaming-failure-recitation-no-content.txt, its last chunk `{ finishReason: 'RECITATION', citationMetadata }`);
 * - a blocked prompt has no candidate: `promptFeedback` (its `safetyRatings` only for SAFETY or a named category),
 *   usage of `promptTokenCount` and `totalTokenCount` alone, and `modelVersion`; in a stream it is the one event;
 * - no candidate at all: the usage alone.
 * `usage` is the emulator's full usage of the call and `text` its answer, withheld (a default citation's offsets point
 * into it); `responseId` is left off for a batch's inline response; `streamedText`, the text sent before this stop
 * (a stream's chunks, `stoppedStream`; a generate call's content, `stoppedAnswer`), is billed as candidates tokens.
 */
export function refusalBody(r: Refusal, o: { model: string; usage: WireUsage; text: string; responseId?: string; streamedText?: string[] }): Record<string, unknown> {
  const prompt = o.usage.promptTokenCount;
  const { serviceTier } = o.usage;
  const tier = serviceTier !== undefined ? { serviceTier } : {};
  const category = r.category ?? (r.finishReason === 'SAFETY' || r.blockReason === 'SAFETY' ? DEFAULT_SAFETY_CATEGORY : undefined);
  const ratings = category ? { safetyRatings: safetyRatings(category) } : {};
  const id = o.responseId ? { responseId: o.responseId } : {};
  if (r.blockReason) {
    return { promptFeedback: { blockReason: r.blockReason, ...ratings }, usageMetadata: { promptTokenCount: prompt, totalTokenCount: prompt, ...tier }, modelVersion: o.model };
  }
  const usageMetadata = promptUsage(o.usage);
  if (!r.finishReason) return { usageMetadata, modelVersion: o.model, ...id };
  const cited = r.finishReason === 'RECITATION' ? citationMetadata(r, o.text, o.streamedText) : {};
  const candidate = { finishReason: r.finishReason, index: 0, ...ratings, ...(r.finishMessage ? { finishMessage: r.finishMessage } : {}), ...cited };
  return { candidates: [candidate], usageMetadata: o.streamedText ? streamedUsage(o.usage, o.streamedText) : usageMetadata, modelVersion: o.model, ...id };
}

/**
 * The usage of a stream stopped after some text: the prompt's, plus the text it streamed as candidates tokens and
 * the thinking that came before that text (Gemini bills what it generated, the text it then withheld included).
 */
function streamedUsage(usage: WireUsage, text: string[]): Record<string, unknown> {
  const out = countTokens(text.join(''));
  const thoughts = usage.thoughtsTokenCount ?? 0;
  return {
    ...promptUsage(usage),
    candidatesTokenCount: out,
    totalTokenCount: usage.promptTokenCount + out + thoughts,
    candidatesTokensDetails: [{ modality: 'TEXT', tokenCount: out }],
    ...(thoughts > 0 ? { thoughtsTokenCount: thoughts } : {}),
  };
}

/**
 * A stream Gemini stops after some text (fault `refuse` with `afterChunks`), as it streams one: the text chunks,
 * each with the usage of the prompt (and the thinking before the text) as on any stream's chunk but its last, and on
 * a 2.5 model the running count of the text so far (`chunkUsage`; FirebaseExtended/vertexai-sdk-test-data googleai
 * streaming-failure-recitation-no-content.txt), then the stop: a candidate with no content (the FinishReason
 * reference: "when streaming, the content field is empty if content filters block the output"), its finishReason and
 * ratings as in `refusalBody`, and the usage of the prompt and the text streamed. Before a RECITATION stop, the text
 * chunk the recitation began in, the last one sent, cites its own bytes (that recording: the text chunks before the
 * stop carry `citationMetadata` for the stretches they recite, the stop the withheld rest), naming the stop's first
 * source (none when the fault names no source). The events' bodies, in order.
 */
export function stoppedStream(r: Refusal, text: string[], o: { model: string; usage: WireUsage; text: string; responseId: string }): Record<string, unknown>[] {
  let soFar = '';
  const chunks = text.map((t, i) => {
    const from = Buffer.byteLength(soFar);
    soFar += t;
    const cites = r.finishReason === 'RECITATION' && i === text.length - 1 ? citedChunk(r, from, Buffer.byteLength(soFar)) : {};
    return { candidates: [{ content: { parts: [{ text: t }], role: 'model' }, index: 0, ...cites }], usageMetadata: chunkUsage(o.usage, o.model, soFar), modelVersion: o.model, responseId: o.responseId };
  });
  return [...chunks, refusalBody(r, { ...o, streamedText: text })];
}

/** A streamed text chunk's own citation (bytes `from` to `to` of the answer, end exclusive) of the stop's first source. */
function citedChunk(r: Refusal, from: number, to: number): Record<string, unknown> {
  const first = r.citations ? r.citations[0] : { uri: DEFAULT_CITATION_URI };
  if (!first || from >= to) return {};
  return { citationMetadata: { citationSources: [{ startIndex: from, endIndex: to, ...(first.uri ? { uri: first.uri } : {}), ...(first.license ? { license: first.license } : {}) }] } };
}

/**
 * A generate call Gemini stops after some text (fault `refuse` with `afterChunks`), as it answers one: its one body
 * is the stopped candidate of `refusalBody` with that text as its `content`, the usage counting it as
 * candidatesTokenCount (FirebaseExtended/vertexai-sdk-test-data googleai unary-failure-finish-reason-safety.txt:
 * `content: { parts: [{ text }], role: 'model' }`, `finishReason: 'SAFETY'`, the ratings, and a usage with
 * candidatesTokenCount and candidatesTokensDetails). The text is what a stream of the same answer sends before its
 * stop (its first chunks, `stoppedStream`), in one part.
 */
export function stoppedAnswer(r: Refusal, text: string[], o: { model: string; usage: WireUsage; text: string; responseId: string }): Record<string, unknown> {
  const body = refusalBody(r, { ...o, streamedText: text });
  const [candidate] = body.candidates as Record<string, unknown>[];
  return { ...body, candidates: [{ content: { parts: [{ text: text.join('') }], role: 'model' }, ...candidate }] };
}

/** The implicit-cache hit a refusal body bills (0 for a blocked prompt), for the call log. */
export function refusalCachedTokens(body: Record<string, unknown>): number {
  return (body.usageMetadata as { cachedContentTokenCount?: number }).cachedContentTokenCount ?? 0;
}
