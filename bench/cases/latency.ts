import type { BenchContext } from '../lib/context.js';
export async function latencyCase(_ctx: BenchContext): Promise<void> {}
