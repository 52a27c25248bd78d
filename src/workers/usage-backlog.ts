/**
 * USAGE_BACKLOG_MAX_ROWS over every queue shard's usage stream together (QUEUE_SHARDS > 1): the bound is on the
 * rows Redis holds while Postgres cannot take them, however many streams they are in, and every shard's worker
 * of the process stops taking jobs while the total is over it, and takes them again at 80 %. Each shard's sink
 * only sees its own stream's length, and judged alone each let S times the bound pile up (a stream per shard,
 * each under it) while the workers of the shards not yet over kept taking jobs.
 *
 * A sink that sees its stream's length (`seen`: an acknowledgement, a ride, an XLEN of a failed retry) has the
 * total read again (`lengths`: every stream's XLEN), at most once per `everyMs`, and once more at the end of
 * that period when it was asked meanwhile: the last length seen (the backlog written down) is always judged.
 * Not a length kept per sink: another process's sinks may write a stream down while this one's reads nothing.
 */
export function createUsageBacklog(opts: { max: number; lengths: () => Promise<number[]>; everyMs?: number; onError?: (err: unknown) => void }) {
  const everyMs = opts.everyMs ?? 1000;
  const holds = new Set<(over: boolean, rows: number) => void>();
  let over = false;
  let rows = 0;
  let readAt = -Infinity;
  let reading = false;
  let again: NodeJS.Timeout | undefined;
  /** A length seen while a read was out: read again once it is back. */
  let asked = false;

  function judge(total: number): void {
    rows = total;
    if (!over && total > opts.max) over = true;
    else if (over && total <= Math.floor(opts.max * 0.8)) over = false;
    else return;
    for (const hold of holds) hold(over, total);
  }

  async function read(): Promise<void> {
    reading = true;
    readAt = Date.now();
    try {
      judge((await opts.lengths()).reduce((a, b) => a + b, 0));
    } catch (err) {
      opts.onError?.(err);
    } finally {
      reading = false;
      if (asked) {
        asked = false;
        seen();
      }
    }
  }

  /** A sink saw its stream's length. */
  function seen(): void {
    if (opts.max <= 0 || again) return;
    // One read at a time, in order: a length seen during a read is judged by the next one.
    if (reading) return void (asked = true);
    const wait = readAt + everyMs - Date.now();
    if (wait <= 0) return void read();
    again = setTimeout(() => {
      again = undefined;
      seen();
    }, wait);
    again.unref();
  }

  return {
    /** `hold(over, rows)` on every crossing; at once when the total is over already. Returns the detach. */
    attach(hold: (over: boolean, rows: number) => void): () => void {
      holds.add(hold);
      if (over) hold(true, rows);
      return () => void holds.delete(hold);
    },
    seen,
    close(): void {
      clearTimeout(again);
      holds.clear();
    },
  };
}

export type UsageBacklog = ReturnType<typeof createUsageBacklog>;
