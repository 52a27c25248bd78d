/** A UTC calendar day in unix ms (no leap seconds in unix time). */
export const DAY_MS = 86_400_000;

/** One UTC calendar day: its name (YYYY-MM-DD) and its bounds in unix ms. */
export interface UtcDay {
  name: string;
  startMs: number;
  endMs: number;
}

export function utcDayOf(ms: number): UtcDay {
  const startMs = Math.floor(ms / DAY_MS) * DAY_MS;
  return { name: new Date(startMs).toISOString().slice(0, 10), startMs, endMs: startMs + DAY_MS };
}
