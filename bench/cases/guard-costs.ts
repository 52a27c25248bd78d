import type { BenchContext } from '../lib/context.js';
export async function guardCostsCase(_ctx: BenchContext): Promise<void> {}
