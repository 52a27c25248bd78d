import type { BenchContext } from '../lib/context.js';
export async function enqueueCase(_ctx: BenchContext): Promise<void> {}
