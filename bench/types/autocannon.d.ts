// autocannon ships no types; the bench's load child uses only these fields.
declare module 'autocannon' {
  interface Histogram {
    p50: number;
    p99: number;
    average: number;
  }
  interface Result {
    '2xx': number;
    non2xx: number;
    errors: number;
    timeouts: number;
    duration: number;
    latency: Histogram;
    requests: Histogram & { total: number };
  }
  function autocannon(opts: Record<string, unknown>): Promise<Result>;
  export default autocannon;
}
