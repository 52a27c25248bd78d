import { createServer, request, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';

/** Requests held at the gate until the test lets them through. */
export interface Held {
  /** Resolves once `times` matching requests have arrived (and are being held). */
  arrived: Promise<void>;
  /** How many matching requests have arrived so far. */
  count(): number;
  /** Forwards the held requests (and any later matching ones) to the model; clients that left are skipped. */
  release(): void;
}

export interface ModelGate {
  /** Base URL to give a worker as GOOGLE_GEMINI_BASE_URL. */
  url: string;
  /** Holds the next `times` requests whose body contains `text`. */
  hold(text: string, times?: number): Held;
  close(): Promise<void>;
}

interface Hold {
  text: string;
  left: number;
  seen: number;
  released: boolean;
  waiting: Array<() => void>;
  onArrive: () => void;
}

/**
 * A pass-through HTTP proxy in front of the Gemini emulator that can hold chosen model calls open until
 * the test releases them, so "a call is in flight" is a state the test controls rather than a latency
 * it hopes outlasts its own steps (which a busy machine can stretch without bound).
 */
export async function startModelGate(target: string): Promise<ModelGate> {
  const upstream = new URL(target);
  const holds: Hold[] = [];

  const forward = (req: IncomingMessage, res: ServerResponse, body: Buffer) => {
    if (res.destroyed || req.socket.destroyed) return;
    const up = request(
      { host: upstream.hostname, port: upstream.port, method: req.method, path: req.url, headers: { ...req.headers, host: upstream.host } },
      (upRes) => {
        res.writeHead(upRes.statusCode ?? 502, upRes.headers);
        upRes.pipe(res);
      },
    );
    up.on('error', () => res.destroy());
    res.on('close', () => up.destroy());
    up.end(body);
  };

  const server = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      const body = Buffer.concat(chunks);
      const text = body.toString('utf8');
      const h = holds.find((x) => x.left !== 0 && text.includes(x.text));
      if (!h) return forward(req, res, body);
      h.left--;
      h.seen++;
      h.onArrive();
      if (h.released) return forward(req, res, body);
      h.waiting.push(() => forward(req, res, body));
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));

  return {
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    hold(text, times = 1) {
      let arrive!: () => void;
      const arrived = new Promise<void>((r) => (arrive = r));
      const h: Hold = { text, left: times, seen: 0, released: false, waiting: [], onArrive: () => h.seen >= times && arrive() };
      holds.push(h);
      return {
        arrived,
        count: () => h.seen,
        release() {
          h.released = true;
          for (const go of h.waiting.splice(0)) go();
        },
      };
    },
    async close() {
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}
