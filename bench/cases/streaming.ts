import type { BenchContext } from '../lib/context.js';
export async function streamingCase(_ctx: BenchContext): Promise<void> {}
