/**
 * HTTP load from a second process (autocannon), so the API process under test spends its CPU only on
 * serving. Argument: JSON `{ url, body, headers, connections, durationS }`; answers `{ ready: result }`.
 */
import autocannon from 'autocannon';
import { toParent } from '../lib/child.js';

const o = JSON.parse(process.argv[2]) as { url: string; body: string; headers: Record<string, string>; connections: number; durationS: number };
const result = await autocannon({
  url: o.url,
  method: 'POST',
  headers: { 'content-type': 'application/json', ...o.headers },
  body: o.body,
  connections: o.connections,
  duration: o.durationS,
  pipelining: 1,
});
toParent({
  ready: {
    ok2xx: result['2xx'],
    non2xx: result.non2xx,
    errors: result.errors,
    timeouts: result.timeouts,
    durationS: result.duration,
    latencyP50: result.latency.p50,
    latencyP99: result.latency.p99,
  },
});
process.exit(0);
