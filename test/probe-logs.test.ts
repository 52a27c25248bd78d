import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { captureLogs, type CapturedLogs } from './helpers/ops.js';
import { startStack, type Stack } from './helpers/stack.js';

const ADMIN_TOKEN = 'probe-logs-admin-0123456789';

describe('request logs', () => {
  let s: Stack;
  let logs: CapturedLogs;
  beforeAll(async () => {
    logs = captureLogs('debug');
    s = await startStack({ ADMIN_TOKEN }, { logger: logs.logger });
  });
  afterAll(async () => s?.close());

  const levelsOf = (requestId: string) => logs.lines().filter((l) => l.requestId === requestId && /request (completed|errored)|incoming request/.test(l.msg)).map((l) => l.level);

  it('logs probes and scrapes at debug, and every other request at info', async () => {
    const probes = [
      { url: '/healthz' },
      { url: '/readyz' },
      { url: '/metrics', headers: { authorization: `Bearer ${ADMIN_TOKEN}` } },
    ];
    for (const p of probes) {
      const res = await s.app.inject({ method: 'GET', ...p, headers: { ...p.headers, 'x-request-id': `probe-${p.url.slice(1)}` } });
      expect(res.statusCode).toBe(200);
      expect(levelsOf(`probe-${p.url.slice(1)}`)).toEqual([20, 20]);
    }
    const res = await s.app.inject({ method: 'GET', url: '/v1/agents', headers: { ...s.auth, 'x-request-id': 'probe-agents' } });
    expect(res.statusCode).toBe(200);
    expect(levelsOf('probe-agents')).toEqual([30, 30]);
  });
});
