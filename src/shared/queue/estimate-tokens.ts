/**
 * Tokens one attempt is charged before the call (the dispatcher's TPM reservation and the worker's first
 * try): about 4 characters per token of input, plus a typical answer. Corrected with real usage afterwards.
 */
export function estimateTokens(input: unknown): number {
  return Math.ceil(JSON.stringify(input ?? null).length / 4) + 512;
}
