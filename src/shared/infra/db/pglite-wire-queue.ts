import type { PGlite } from '@electric-sql/pglite';
import type { PGLiteSocketServer } from '@electric-sql/pglite-socket';

// Frontend message types (first byte of a wire message).
const SYNC = 0x53; // 'S'
const QUERY = 0x51; // 'Q'
const TERMINATE = 0x58; // 'X'
/** Messages of an extended-query sequence; the sequence only ends at Sync. */
const EXTENDED = new Set([0x50 /* P */, 0x42 /* B */, 0x44 /* D */, 0x45 /* E */, 0x43 /* C */, 0x48 /* H */]);
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
        let bytes = 0;
        let failed: unknown;
        try {
          await this.db.runExclusive(() =>
            this.db.execProtocolRawStream(item.message, {
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
        else if (EXTENDED.has(type)) midSequence = true;
        this.lastHandlerId = item.handlerId;
        if (failed === undefined) item.resolve(bytes);
        else item.reject(failed);
      }
    } finally {
      this.processing = false;
    }
  };

  q.clearTransactionIfNeeded = async function clearTransactionIfNeeded(this: QueryQueue, handlerId: number) {
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
