import type { BenchContext } from '../lib/context.js';
export async function vectorsCase(_ctx: BenchContext): Promise<void> {}
