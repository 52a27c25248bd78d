import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { gzipSync } from 'node:zlib';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createNodeHttpFetch, nodeUsesEnvProxy } from '../src/shared/infra/llm/node-http-fetch.js';

// The transport's own contract, against a plain node:http server (the SDK's calls through it: llm-client.test.ts).
let server: Server;
let base: string;
let connections = 0;
const seen: Array<{ method?: string; url?: string; headers: IncomingMessage['headers']; body: string }> = [];

function handle(req: IncomingMessage, res: ServerResponse, body: string): void {
  seen.push({ method: req.method, url: req.url, headers: req.headers, body });
  if (req.url === '/gzip') {
    res.writeHead(200, { 'content-type': 'application/json', 'content-encoding': 'gzip' });
    res.end(gzipSync(JSON.stringify({ ok: true, echo: body })));
  } else if (req.url === '/sse') {
    res.writeHead(200, { 'content-type': 'text/event-stream' });
    res.write('data: {"n":1}\n\n');
    // The second event only after the client has read the first: a buffered body would never get here.
    const next = setTimeout(() => res.end('data: {"n":2}\n\n'), 30_000);
    req.on('data', () => undefined);
    res.on('close', () => clearTimeout(next));
    sse.release = () => {
      clearTimeout(next);
      res.end('data: {"n":2}\n\n');
    };
  } else if (req.url === '/slow') {
    setTimeout(() => {
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end('{"slow":true}');
    }, 300);
  } else if (req.url === '/empty') {
    res.writeHead(204, { 'x-seen': 'yes' });
    res.end();
  } else if (req.url === '/cut') {
    res.writeHead(200, { 'content-type': 'application/json', 'content-length': '1000' });
    res.write('{"partial":');
    setTimeout(() => res.socket?.destroy(), 10);
  } else {
    res.writeHead(201, [['content-type', 'application/json'], ['set-cookie', 'a=1'], ['set-cookie', 'b=2']]);
    res.end(JSON.stringify({ method: req.method, body }));
  }
}
const sse: { release?: () => void } = {};

beforeAll(async () => {
  server = createServer((req, res) => {
    let body = '';
    req.on('data', (c: Buffer) => (body += c));
    req.on('end', () => handle(req, res, body));
  });
  server.on('connection', () => connections++);
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
});
afterAll(async () => {
  server.closeAllConnections();
  await new Promise((resolve) => server.close(resolve));
});

describe('node-http fetch (LLM_HTTP_TRANSPORT=node-http)', () => {
  it('sends the method, headers and body; answers status, headers (repeated ones kept) and body; reuses one connection', async () => {
    const f = createNodeHttpFetch();
    const before = connections;
    for (let i = 0; i < 5; i++) {
      const res = await f(`${base}/json?i=${i}`, { method: 'POST', headers: new Headers({ 'content-type': 'application/json', 'x-goog-api-client': 'test' }), body: `{"i":${i}}` });
      expect(res.status).toBe(201);
      expect(res.ok).toBe(true);
      expect(res.headers.get('set-cookie')).toBe('a=1, b=2');
      expect(await res.json()).toEqual({ method: 'POST', body: `{"i":${i}}` });
    }
    expect(seen.at(-1)).toMatchObject({ method: 'POST', url: '/json?i=4', headers: { 'x-goog-api-client': 'test', 'content-length': '7' } });
    // Keep-alive: five calls one after another, one connection.
    expect(connections - before).toBe(1);
  });

  it('closes idle sockets after the idle timeout, never a request waiting longer than it for its answer', async () => {
    const f = createNodeHttpFetch({ idleSocketMs: 100 });
    const before = connections;
    // The answer comes 300 ms after the request: three idle timeouts while it is in flight.
    expect(await (await f(`${base}/slow`)).json()).toEqual({ slow: true });
    expect(connections - before).toBe(1);
    await (await f(`${base}/json`)).text();
    expect(connections - before).toBe(1);
    // Idle past the timeout: the socket was closed, the next call opens another.
    await new Promise((resolve) => setTimeout(resolve, 400));
    await (await f(`${base}/json`)).text();
    expect(connections - before).toBe(2);
  });

  it('decodes a body a server compressed although none was asked for, and a 204 has no body', async () => {
    const f = createNodeHttpFetch();
    expect(await (await f(`${base}/gzip`, { method: 'POST', body: 'hi' })).json()).toEqual({ ok: true, echo: 'hi' });
    expect(seen.at(-1)!.headers['accept-encoding']).toBeUndefined();
    const empty = await f(`${base}/empty`);
    expect(empty.status).toBe(204);
    expect(empty.headers.get('x-seen')).toBe('yes');
    expect(await empty.text()).toBe('');
  });

  it('hands an event stream over as it arrives', async () => {
    const f = createNodeHttpFetch();
    const res = await f(`${base}/sse`);
    const reader = res.body!.getReader();
    const first = await reader.read();
    expect(new TextDecoder().decode(first.value)).toBe('data: {"n":1}\n\n');
    sse.release!();
    let rest = '';
    for (let r = await reader.read(); !r.done; r = await reader.read()) rest += new TextDecoder().decode(r.value);
    expect(rest).toBe('data: {"n":2}\n\n');
  });

  it('fails a body cut off before its end, and an aborted call, as the global fetch would be classified (network / abort)', async () => {
    const f = createNodeHttpFetch();
    await expect(f(`${base}/cut`)).rejects.toMatchObject({ code: 'ECONNRESET' });
    const ac = new AbortController();
    ac.abort();
    await expect(f(`${base}/json`, { signal: ac.signal })).rejects.toMatchObject({ name: 'AbortError' });
    await expect(f('http://127.0.0.1:1/nothing-listens')).rejects.toMatchObject({ code: 'ECONNREFUSED' });
  });

  it('leaves what it does not carry (a Request object, a stream body) to the global fetch', async () => {
    const f = createNodeHttpFetch();
    const res = await f(new Request(`${base}/json`, { method: 'PUT', body: 'via fetch' }));
    expect(await res.json()).toEqual({ method: 'PUT', body: 'via fetch' });
    // The global fetch sends its own headers; node:http sends none of these.
    expect(seen.at(-1)!.headers['sec-fetch-mode']).toBe('cors');
  });

  it("knows when Node follows the environment's proxies (then startGemini does not use this transport)", () => {
    expect(nodeUsesEnvProxy({}, [])).toBe(false);
    expect(nodeUsesEnvProxy({ HTTPS_PROXY: 'http://proxy:3128' }, [])).toBe(false);
    expect(nodeUsesEnvProxy({ NODE_USE_ENV_PROXY: '0' }, [])).toBe(false);
    expect(nodeUsesEnvProxy({ NODE_USE_ENV_PROXY: '1' }, [])).toBe(true);
    expect(nodeUsesEnvProxy({}, ['--use-env-proxy'])).toBe(true);
    expect(nodeUsesEnvProxy({ NODE_OPTIONS: '--max-old-space-size=512  --use-env-proxy' }, [])).toBe(true);
    expect(nodeUsesEnvProxy({ NODE_OPTIONS: '--use-env-proxy-not' }, [])).toBe(false);
  });
});
