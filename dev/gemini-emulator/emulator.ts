export { startGeminiEmulator, type CallRecord, type GeminiEmulator, type GeminiEmulatorOptions } from './emulator-server.js';
export { createEmulatorControl, type EmulatorControl } from './emulator-control.js';
export type { CallKind, EmulatorFault, FaultMatch } from './faults.js';
export { countTokens, tokenize } from './tokenizer.js';
export { embedText, cosine } from './embedder.js';
export { DEFAULT_BATCH_TIMING, type BatchTiming, type BatchState } from './batches.js';
export type { UsageModelOptions } from './usage-model.js';
export type { QuotaScope } from './gemini-wire.js';
