import type { PGlite } from '@electric-sql/pglite';
import type { PGLiteSocketServer } from '@electric-sql/pglite-socket';

// Frontend message types (first byte of a wire message).
const SYNC = 0x53; // 'S'
const QUERY = 0x51; // 'Q'
const TERMINATE = 0x58; // 'X'
/** Messages of an extended-query sequence; the sequence only ends at Sync. */
const EXTENDED = new Set([0x50 /* P */, 0x42 /* B */, 0x44 /* D */, 0x45 /* E */, 0x43 /* C */, 0x48 /* H */]);
/**
 * Those of them a server need not answer before a Sync or Flush (H): held, and run with the message that ends
 * them, so `pg`'s Parse/Bind/Describe/Execute/Sync is one call into PGlite and one socket write instead of five
 * (each call costs PGlite ~0.05 ms warm, ~0.25 ms with its caches cold: a scratch run of SELECT $1 at 20 a second,
 * 2.5-3.3 ms of PGlite CPU per query, 1.5-2 ms for a one-message SELECT 1).
 */
const HELD = new Set([0x50 /* P */, 0x42 /* B */, 0x44 /* D */, 0x45 /* E */, 0x43 /* C */]);
const SYNC_MESSAGE = new Uint8Array([SYNC, 0, 0, 0, 4]);

interface QueuedMessage {
  handlerId: number;
  message: Uint8Array;
  resolve(bytes: number): void;
  reject(err: unknown): void;
  onData(data: Uint8Array): void;
}

interface QueryQueue {
  db: PGlite;
  queue: QueuedMessage[];
  processing: boolean;
  lastHandlerId: number | null;
  processQueue(): Promise<void>;
  clearTransactionIfNeeded(handlerId: number): Promise<void>;
}

/**
 * pglite-socket 0.2.x runs every connection's messages through one queue, one MESSAGE at a time, and only
 * keeps a connection's turn while an explicit transaction is open. `pg` sends a parameterised query as
 * Parse/Bind/Describe/Execute/Sync, so two connections interleave and bind each other's unnamed statement
 * ("bind message supplies 1 parameters, but prepared statement "" requires 2", "portal "" does not exist").
 * This replaces the queue's scheduler so a connection also keeps its turn from its first extended-query
 * message until its Sync, and so a connection that disconnects mid-sequence or mid-transaction is synced
 * and rolled back instead of wedging the session. It also keeps the queue running after an exception
 * (the original stops processing for good).
 */
export function serialiseExtendedQueries(server: PGLiteSocketServer): void {
  const q = (server as unknown as { queryQueue?: QueryQueue }).queryQueue;
  if (!q || !Array.isArray(q.queue) || typeof q.processQueue !== 'function' || typeof q.clearTransactionIfNeeded !== 'function') {
    throw new Error('pglite-socket internals changed: review src/shared/infra/db/pglite-wire-queue.ts');
  }
  let midSequence = false;
  /** Per connection, the held messages of a sequence not yet run: never seen by PGlite until what ends them comes. */
  const held = new Map<number, Uint8Array[]>();
  const withHeld = (item: QueuedMessage): Uint8Array => {
    const parts = held.get(item.handlerId);
    if (!parts) return item.message;
    held.delete(item.handlerId);
    // Terminate is recognised by PGlite only as a message alone; a sequence it cuts short was never run.
    if (item.message[0] === TERMINATE) return item.message;
    parts.push(item.message);
    const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
    let at = 0;
    for (const p of parts) {
      out.set(p, at);
      at += p.length;
    }
    return out;
  };

  const pinned = () => q.lastHandlerId !== null && (midSequence || q.db.isInTransaction());

  q.processQueue = async function processQueue(this: QueryQueue) {
    if (this.processing) return;
    this.processing = true;
    try {
      while (this.queue.length > 0) {
        let item: QueuedMessage | undefined;
        if (pinned()) {
          const i = this.queue.findIndex((m) => m.handlerId === this.lastHandlerId);
          if (i === -1) break; // wait for the turn holder; its next enqueue restarts processing
          item = this.queue.splice(i, 1)[0];
        } else {
          item = this.queue.shift()!;
        }
        const type = item.message[0];
        if (HELD.has(type)) {
          // Answered at once (the connection's reader goes on to its next message); run with the Sync or Flush.
          const parts = held.get(item.handlerId);
          if (parts) parts.push(item.message);
          else held.set(item.handlerId, [item.message]);
          item.resolve(0);
          continue;
        }
        const message = withHeld(item);
        let bytes = 0;
        let failed: unknown;
        try {
          await this.db.runExclusive(() =>
            this.db.execProtocolRawStream(message, {
              onRawData: (data) => {
                bytes += data.length;
                item.onData(data);
              },
            }),
          );
        } catch (err) {
          failed = err;
        }
        if (type === SYNC || type === QUERY || type === TERMINATE) midSequence = false;
        else if (EXTENDED.has(type) || message !== item.message) midSequence = true;
        this.lastHandlerId = item.handlerId;
        if (failed === undefined) item.resolve(bytes);
        else item.reject(failed);
      }
    } finally {
      this.processing = false;
    }
  };

  q.clearTransactionIfNeeded = async function clearTransactionIfNeeded(this: QueryQueue, handlerId: number) {
    // A sequence held and never ended: never run, nothing to undo.
    held.delete(handlerId);
    if (this.lastHandlerId !== handlerId) return;
    if (midSequence) {
      await this.db.runExclusive(() => this.db.execProtocolRaw(SYNC_MESSAGE));
      midSequence = false;
    }
    if (this.db.isInTransaction()) await this.db.exec('ROLLBACK');
    this.lastHandlerId = null;
    await this.processQueue();
  };
}
