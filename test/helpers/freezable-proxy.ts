import { connect, createServer, type AddressInfo, type Server, type Socket } from 'node:net';

/**
 * A TCP proxy to a Redis whose open connections can be frozen: nothing more goes through them (both ways, or only
 * Redis's replies), and nothing closes them, as with a peer gone behind a dropped NAT entry. New connections pass.
 * Replies can also be held back and let through later, in order (a reply that arrives late).
 */
export async function freezableProxy(target: URL) {
  type Pair = { client: Socket; upstream: Socket; requests: boolean; replies: boolean; held?: Buffer[]; holdAfter?: Buffer; tail: Buffer };
  const pairs: Pair[] = [];
  // Markers whose requests are counted (`sentOn`): the connections, open or ended, whose requests held each.
  const watched = new Map<string, { marker: Buffer; on: WeakSet<Pair>; count: number }>();
  const recent = new WeakMap<Pair, Buffer>();
  const server: Server = createServer((client) => {
    const upstream = connect(Number(target.port), target.hostname);
    const pair: Pair = { client, upstream, requests: true, replies: true, tail: Buffer.alloc(0) };
    pairs.push(pair);
    client.on('data', (d: Buffer) => {
      if (watched.size > 0) {
        // As `holdAfter`: a marker may straddle two chunks.
        const seen = Buffer.concat([recent.get(pair) ?? Buffer.alloc(0), d]);
        let keep = 0;
        for (const w of watched.values()) {
          keep = Math.max(keep, w.marker.length - 1);
          if (!w.on.has(pair) && seen.includes(w.marker)) {
            w.on.add(pair);
            w.count++;
          }
        }
        recent.set(pair, seen.subarray(Math.max(0, seen.length - keep)));
      }
      if (pair.holdAfter && !pair.held) {
        // The marker may straddle two chunks: the end of the previous one is searched with this one.
        const seen = Buffer.concat([pair.tail, d]);
        if (seen.includes(pair.holdAfter)) pair.held = [];
        pair.tail = seen.subarray(Math.max(0, seen.length - pair.holdAfter.length + 1));
      }
      if (pair.requests) upstream.write(d);
    });
    upstream.on('data', (d: Buffer) => {
      if (pair.held) pair.held.push(d);
      else if (pair.replies) client.write(d);
    });
    const end = () => {
      client.destroy();
      upstream.destroy();
    };
    client.on('close', end);
    upstream.on('close', end);
    client.on('error', () => {});
    upstream.on('error', () => {});
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    port: (server.address() as AddressInfo).port,
    /** Open connections pass nothing more either way. */
    freeze: () => pairs.forEach((p) => ((p.requests = false), (p.replies = false))),
    /** Open connections lose Redis's replies from now on; requests still reach Redis. */
    dropReplies: () => pairs.forEach((p) => (p.replies = false)),
    /**
     * An open connection holds Redis's replies back once a request holding `marker` (e.g. a key) went through it:
     * Redis runs the requests, their answers wait for `passReplies()`.
     */
    holdRepliesAfter: (marker: string) => pairs.forEach((p) => ((p.holdAfter = Buffer.from(marker)), (p.tail = Buffer.alloc(0)))),
    /** Whether some connection holds replies back (a request with the marker went through). */
    holding: () => pairs.some((p) => p.held !== undefined),
    /** Sends the held replies on, in order, and holds nothing more. */
    passReplies: () =>
      pairs.forEach((p) => {
        const held = p.held ?? [];
        p.held = undefined;
        p.holdAfter = undefined;
        for (const d of held) p.client.write(d);
      }),
    /** Counts from now on the connections whose requests hold `marker` (`sentOn`). */
    watch: (marker: string) => void watched.set(marker, { marker: Buffer.from(marker), on: new WeakSet(), count: 0 }),
    /** How many connections, open or ended, sent a request holding a watched `marker`: 2 for a call sent again. */
    sentOn: (marker: string) => watched.get(marker)?.count ?? 0,
    /** Ends every open connection (both sockets), as a network reset does. */
    reset: () => pairs.splice(0).forEach((p) => (p.client.destroy(), p.upstream.destroy())),
    close: () => {
      pairs.forEach((p) => (p.client.destroy(), p.upstream.destroy()));
      server.close();
    },
  };
}
