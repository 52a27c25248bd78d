import type { BenchInfra } from './infra.js';
import type { Figure } from './report.js';

export interface BenchContext {
  b: BenchInfra;
  add(f: Figure): void;
  log(msg: string): void;
  /** Epoch ms by which the whole bench must be done; long cases size themselves against it. */
  deadline: number;
  /** Figures later cases build on (e.g. the measured max throughput for the latency case). */
  shared: Record<string, number>;
  /** Raw measurements kept in latest.json beside the figures. */
  details: Record<string, unknown>;
  /** Told when a throughput measurement window opens and closes (the redis-instructions case dumps counters). */
  windowEdge?: (edge: 'start' | 'end') => Promise<void>;
}

/** `optIn` cases run only when BENCH_ONLY names them. */
export type BenchCase = { name: string; run(ctx: BenchContext): Promise<void>; optIn?: boolean };

/** Met / missed, or null when either side could not be measured. */
export function check(ok: boolean | undefined): boolean | null {
  return ok === undefined ? null : ok;
}
