import type { BenchContext } from '../lib/context.js';
export async function accuracyCase(_ctx: BenchContext): Promise<void> {}
