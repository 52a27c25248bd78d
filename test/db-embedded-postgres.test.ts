import { connect, type Socket } from 'node:net';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createPool } from '../src/shared/infra/db/pool.js';
import { databaseUrl } from './helpers/env.js';
import { within } from './helpers/wait.js';
import { freshEmbeddedPostgres } from './helpers/fresh-embedded.js';

/** A raw wire-protocol connection, to misbehave in ways `pg` never does. */
async function rawConnection(url: string): Promise<Socket> {
  const { hostname, port } = new URL(url);
  const socket = connect(Number(port), hostname);
  await new Promise<void>((resolve, reject) => socket.once('connect', resolve).once('error', reject));
  const params = Buffer.from('user\0postgres\0database\0postgres\0\0');
  const startup = Buffer.alloc(8);
  startup.writeInt32BE(8 + params.length, 0);
  startup.writeInt32BE(196608, 4);
  socket.write(Buffer.concat([startup, params]));
  // Wait for ReadyForQuery ('Z').
  await new Promise<void>((resolve) => {
    const onData = (d: Buffer) => {
      if (d.includes(0x5a)) {
        socket.off('data', onData);
        resolve();
      }
    };
    socket.on('data', onData);
  });
  return socket;
}

/** Resolves once the server has sent a message of this type (e.g. 'Z' ReadyForQuery, 'E' ErrorResponse). */
function reply(socket: Socket, type: string): Promise<void> {
  const code = type.charCodeAt(0);
  let pending = Buffer.alloc(0);
  return new Promise((resolve, reject) => {
    const onData = (d: Buffer) => {
      pending = Buffer.concat([pending, d]);
      while (pending.length >= 5) {
        const length = pending.readInt32BE(1);
        if (pending.length < 1 + length) return;
        const t = pending[0];
        pending = pending.subarray(1 + length);
        if (t === code) {
          socket.off('data', onData);
          socket.off('close', onClose);
          return resolve();
        }
      }
    };
    const onClose = () => reject(new Error(`connection closed before a '${type}' message`));
    socket.on('data', onData);
    socket.once('close', onClose);
  });
}

function message(type: string, body: Buffer): Buffer {
  const head = Buffer.alloc(5);
  head.write(type, 0);
  head.writeInt32BE(4 + body.length, 1);
  return Buffer.concat([head, body]);
}

// The PGlite socket server multiplexes every connection into one session; these check the scheduler
// added in pglite-wire-queue.ts (on a real DATABASE_URL they simply pass).
describe('embedded PGlite wire protocol', () => {
  let pools: pg.Pool[];
  beforeAll(() => {
    pools = Array.from({ length: 3 }, () => createPool(databaseUrl(), { max: 4 }));
  });
  afterAll(() => Promise.all(pools.map((p) => p.end())));

  it('keeps concurrent parameterised queries and short transactions from different connections apart', async () => {
    const wrong: unknown[] = [];
    const check = (rows: Array<{ v: number; t?: string }>, n: number, withText: boolean) => {
      if (rows[0]?.v !== n || (withText && rows[0].t !== `s${n}`)) wrong.push(rows[0] ?? 'no row');
    };
    await Promise.all(
      pools.map(async (pool, p) => {
        for (let round = 0; round < 15; round++) {
          await Promise.all(
            Array.from({ length: 6 }, async (_, i) => {
              const n = p * 1000 + round * 10 + i;
              if (i === 0) {
                const client = await pool.connect();
                try {
                  await client.query('BEGIN');
                  check((await client.query('SELECT $1::int AS v', [n])).rows, n, false);
                  await client.query('COMMIT');
                } finally {
                  client.release();
                }
              } else if (i % 2) {
                check((await pool.query('SELECT $1::int AS v, $2::text AS t', [n, `s${n}`])).rows, n, true);
              } else {
                check((await pool.query('SELECT $1::int + 0 AS v', [n])).rows, n, false);
              }
            }),
          );
        }
      }),
    );
    expect(wrong).toEqual([]);
  });

  it('recovers when a connection disconnects mid-transaction or mid extended-query sequence', async () => {
    const inTx = await rawConnection(databaseUrl());
    const begun = reply(inTx, 'Z');
    inTx.write(message('Q', Buffer.from('BEGIN\0')));
    await within(begun, 20_000, 'BEGIN to be answered');
    inTx.destroy();

    const midSequence = await rawConnection(databaseUrl());
    // A Parse that fails puts the session into "skip until Sync"; then vanish without sending Sync. The Flush
    // makes the server run it (a Parse alone is held until what ends its sequence comes).
    const refused = reply(midSequence, 'E');
    midSequence.write(Buffer.concat([message('P', Buffer.from('\0SELEC broken\0\0\0')), message('H', Buffer.alloc(0))]));
    await within(refused, 20_000, 'the bad Parse to be refused');
    midSequence.destroy();

    const { rows } = await pools[0].query('SELECT $1::int AS v', [42]);
    expect(rows[0].v).toBe(42);
    const client = await pools[1].connect();
    try {
      const { rows: tx } = await client.query("SELECT now() = statement_timestamp() AS fresh");
      expect(tx[0].fresh).toBe(true); // not stuck inside the abandoned transaction
    } finally {
      client.release();
    }
  });
});

describe('embedded PGlite wire protocol, one call per sequence', () => {
  it("runs pg's Parse/Bind/Describe/Execute/Sync as one call into PGlite, and a sequence cut short by a disconnect never", async () => {
    const db = await freshEmbeddedPostgres();
    const calls: number[] = [];
    const run = db.db.execProtocolRawStream.bind(db.db);
    db.db.execProtocolRawStream = ((m: Uint8Array, o: Parameters<typeof run>[1]) => (calls.push(m[0]), run(m, o))) as typeof run;
    const pool = createPool(db.url, { max: 2 });
    try {
      await pool.query('SELECT 1');
      calls.length = 0;
      const { rows } = await pool.query('SELECT $1::int AS v, $2::text AS t', [7, 'seven']);
      expect(rows).toEqual([{ v: 7, t: 'seven' }]);
      // One call for the five messages (it starts with the Parse), where each was a call of its own.
      expect(calls).toEqual([0x50]);
      // A failing statement among them: its error, then the connection serves the next query.
      await expect(pool.query('SELECT $1::int / 0 AS v', [1])).rejects.toThrow(/division by zero/);
      expect((await pool.query('SELECT $1::int AS v', [3])).rows[0].v).toBe(3);
      // Parse/Bind/Execute of an INSERT held, then the connection gone before its Sync: never run.
      await pool.query('CREATE TABLE held_probe (v int)');
      const raw = await rawConnection(db.url);
      const insert = Buffer.from('\0INSERT INTO held_probe VALUES (1)\0\0\0');
      const bind = Buffer.from('\0\0\0\0\0\0\0\0');
      raw.write(Buffer.concat([message('P', insert), message('B', bind), message('E', Buffer.from('\0\0\0\0\0'))]));
      calls.length = 0;
      const closed = new Promise<void>((resolve) => raw.once('close', () => resolve()));
      raw.end();
      await within(closed, 20_000, 'the raw connection to close');
      expect((await pool.query('SELECT count(*)::int AS n FROM held_probe')).rows[0].n).toBe(0);
      expect(calls.filter((c) => c === 0x50)).toEqual([]);
    } finally {
      await pool.end();
      await db.stop();
    }
  });
});

describe('embedded Postgres start options', () => {
  it('sharedBuffers sets PGlite\'s shared_buffers and keeps its default start parameters', async () => {
    const db = await freshEmbeddedPostgres({ sharedBuffers: '256MB' });
    try {
      const { rows } = await db.db.query<{ shared_buffers: string; search_path: string }>(
        "SELECT current_setting('shared_buffers') AS shared_buffers, current_setting('search_path') AS search_path",
      );
      expect(rows[0]).toEqual({ shared_buffers: '256MB', search_path: 'public' });
    } finally {
      await db.stop();
    }
  }, 60_000);
});
