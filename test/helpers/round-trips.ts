import type { RedisClient } from '../../src/shared/infra/redis/connection.js';

type Command = { name: string; args: unknown[] };
type Sender = { sendCommand(cmd: Command, stream?: unknown, node?: unknown): unknown };

/**
 * Counts the round trips sent on `redis` from now on that carry a command `picks` takes: a command sent alone is one,
 * a pipeline or MULTI one in all (ioredis hands each of its commands to sendCommand with the pipeline's own writer,
 * and writes them at once). Not with MONITOR: ioredis misparses monitor lines that share a TCP read with its OK.
 */
export function countRoundTrips(redis: RedisClient, picks: (cmd: Command) => boolean) {
  const client = redis as unknown as Sender;
  const send = client.sendCommand;
  const counted = new WeakSet<object>();
  let count = 0;
  client.sendCommand = function (this: Sender, cmd, stream, node) {
    if (picks(cmd)) {
      if (stream === undefined) count++;
      else if (!counted.has(stream as object)) {
        counted.add(stream as object);
        count++;
      }
    }
    return send.call(this, cmd, stream, node);
  };
  return {
    get count() {
      return count;
    },
    stop() {
      client.sendCommand = send;
    },
  };
}

/** Whether a command names one of `ids` (a key or an argument that holds it). */
export const naming = (ids: string[]) => (cmd: Command) => cmd.args.some((a) => ids.some((id) => String(a).includes(id)));
