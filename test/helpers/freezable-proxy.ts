import { connect, createServer, type AddressInfo, type Server, type Socket } from 'node:net';

/**
 * A TCP proxy to a Redis whose open connections can be frozen: nothing more goes through them (both ways, or only
 * Redis's replies), and nothing closes them, as with a peer gone behind a dropped NAT entry. New connections pass.
 */
export async function freezableProxy(target: URL) {
  const pairs: Array<{ client: Socket; upstream: Socket; requests: boolean; replies: boolean }> = [];
  const server: Server = createServer((client) => {
    const upstream = connect(Number(target.port), target.hostname);
    const pair = { client, upstream, requests: true, replies: true };
    pairs.push(pair);
    client.on('data', (d) => void (pair.requests && upstream.write(d)));
    upstream.on('data', (d) => void (pair.replies && client.write(d)));
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
    /** Ends every open connection (both sockets), as a network reset does. */
    reset: () => pairs.splice(0).forEach((p) => (p.client.destroy(), p.upstream.destroy())),
    close: () => {
      pairs.forEach((p) => (p.client.destroy(), p.upstream.destroy()));
      server.close();
    },
  };
}
