import type { BenchContext } from '../lib/context.js';
export async function commandsCase(_ctx: BenchContext): Promise<void> {}
