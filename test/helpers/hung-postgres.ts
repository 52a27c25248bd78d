import { createServer, type AddressInfo, type Socket } from 'node:net';

/** AuthenticationOk ('R', length 8, 0) then ReadyForQuery ('Z', length 5, idle): a connect that succeeds. */
const STARTUP_ANSWER = Buffer.from([0x52, 0, 0, 0, 8, 0, 0, 0, 0, 0x5a, 0, 0, 0, 5, 0x49]);

/**
 * A "Postgres" that takes TCP connections and then answers nothing (`silent`: a SIGSTOPped server, a peer
 * half-open after a failover) or answers the connect and never a query (`stalled`: a server wedged on a lock,
 * or one whose network went away after the handshake). Nothing is ever closed from its side.
 */
export async function hungPostgres(mode: 'silent' | 'stalled') {
  const sockets = new Set<Socket>();
  const server = createServer((socket) => {
    sockets.add(socket);
    socket.on('close', () => sockets.delete(socket));
    socket.on('error', () => {});
    // Everything is read (so a client's close is seen) and ignored, but pg's startup message, its first (no SSL is
    // asked for without sslmode): a stalled server answers that one.
    let started = false;
    socket.on('data', () => {
      if (mode === 'stalled' && !started) socket.write(STARTUP_ANSWER);
      started = true;
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  return {
    url: `postgres://agentq:agentq@127.0.0.1:${port}/agentq`,
    /** Connections the clients still hold open to it. */
    open: () => sockets.size,
    async close() {
      for (const s of sockets) s.destroy();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}
