export { startGeminiEmulator, type CallRecord, type GeminiEmulator, type GeminiEmulatorOptions } from './emulator-server.js';
export { createEmulatorControl, type EmulatorControl } from './emulator-control.js';
export type { CallKind, EmulatorFault, FaultMatch } from './faults.js';
export { countTokens, tokenize } from './tokenizer.js';
export { embedText, cosine } from './embedder.js';
