/** About 4 characters per token: the local estimate wherever Gemini reports no count. */
export function estimateTextTokens(text: string): number {
  return Math.ceil(text.length / 4);
}

/**
 * Tokens one attempt is charged before the call (the dispatcher's TPM reservation and the worker's first
 * try): about 4 characters per token of input, plus a typical answer. Corrected with real usage afterwards.
 */
export function estimateTokens(input: unknown): number {
  return estimateTextTokens(JSON.stringify(input ?? null)) + 512;
}
