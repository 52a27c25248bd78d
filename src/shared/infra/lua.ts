import { readFileSync } from 'node:fs';
import type { Cluster, Redis } from 'ioredis';

export type RedisClient = Redis | Cluster;

/** A Lua script registered on one client with `defineCommand` (EVALSHA, falling back to EVAL on NOSCRIPT). */
export type LuaCall = (keys: readonly string[], args: Array<string | number>) => Promise<unknown>;

/**
 * Reads `<name>-<numKeys>.lua` from the one Lua folder and defines it as a command on `redis`.
 * A file named `-N.lua` takes a variable number of keys: it is defined once per key count it is called with.
 * Command names are namespaced (`agentq:...` is not a valid JS identifier, so `agentq_` is used)
 * so they never clash with scripts that libraries such as rate-limiter-flexible define on the same client.
 */
export function defineLua(redis: RedisClient, file: string): LuaCall {
  const match = /^(.+)-(\d+|N)\.lua$/.exec(file);
  if (!match) throw new Error(`Lua file name must be <name>-<numKeys>.lua: ${file}`);
  const fixedKeys = match[2] === 'N' ? undefined : Number(match[2]);
  const command = `agentq_${match[1].replace(/[^a-zA-Z0-9]/g, '_')}`;
  const lua = readLua(file);
  // Every call names its key count up front (one command per count, defined on first use): with a count in
  // the arguments instead, ioredis's cluster auto-pipelining would group calls by the slot of that number,
  // not of the first key, and put calls for keys on different primaries in one pipeline (which it refuses).
  const commands = new Map<number, (...a: Array<string | number>) => Promise<unknown>>();
  const commandFor = (numberOfKeys: number) => {
    let fn = commands.get(numberOfKeys);
    if (!fn) {
      const name = fixedKeys === undefined ? `${command}_${numberOfKeys}` : command;
      redis.defineCommand(name, { lua, numberOfKeys });
      addToPendingAutoPipelines(redis, name);
      fn = (redis as unknown as Record<string, (...a: Array<string | number>) => Promise<unknown>>)[name].bind(redis);
      commands.set(numberOfKeys, fn);
    }
    return fn;
  };
  if (fixedKeys !== undefined) commandFor(fixedKeys);
  return (keys, args) => {
    if (fixedKeys !== undefined && keys.length !== fixedKeys) {
      return Promise.reject(new Error(`${file} takes ${fixedKeys} keys, got ${keys.length}`));
    }
    // The two arrays as they are: ioredis flattens a command's arguments one level (Command's `args.flat()`), so
    // spreading them here only made two more copies of every call's keys and arguments (the claim's ~35 of them).
    return (commandFor(keys.length) as unknown as (k: readonly string[], a: Array<string | number>) => Promise<unknown>)(keys, args);
  };
}

/**
 * ioredis copies a client's scripts into an auto-pipeline when it creates one, so a pipeline created before a
 * command defined on first use (pending until the next turn of the event loop, or queued behind a running one)
 * lacks it: a call queued into it is rejected, and the pipeline's reply handler then throws on the reply it
 * lacks, an uncaught exception that ends the process (ioredis #1931, "results[i] is not iterable"): bench
 * worker processes died of it. A worker's first claim carrying a result-cache lookup (8 keys, after 4-key
 * calls) is such a first use, often in a tick with other calls pending. Such pipelines get the command too.
 * `_autoPipelines` is ioredis 5's map of them (Redis and Cluster alike), not public API: test/lua-define.test.ts
 * and test/cluster-shards.test.ts reproduce the crash, so an ioredis that changes it fails there.
 */
function addToPendingAutoPipelines(redis: RedisClient, name: string): void {
  const pending = (redis as unknown as { _autoPipelines?: Map<string, Record<string, unknown>> })._autoPipelines;
  if (!(pending instanceof Map)) return;
  const client = redis as unknown as Record<string, unknown>;
  for (const pipeline of pending.values()) {
    pipeline[name] = client[name];
    pipeline[`${name}Buffer`] = client[`${name}Buffer`];
  }
}

export const LUA_DIR = new URL('./lua/', import.meta.url);

const INCLUDE = /^--- @include "([a-z0-9-]+)"$/gm;

/**
 * A script's source with its includes inlined. Redis Lua has no `require`: a part two scripts share lives
 * in `lua/includes/<name>.lua` and is pasted where a script says `--- @include "<name>"` (BullMQ's own
 * convention for its scripts), once per script; an include's own includes are pasted the same way.
 */
export function readLua(file: string): string {
  const seen = new Set<string>();
  const inline = (source: string): string =>
    source.replace(INCLUDE, (_line, name: string) => {
      if (seen.has(name)) return '';
      seen.add(name);
      return inline(readFileSync(new URL(`includes/${name}.lua`, LUA_DIR), 'utf8'));
    });
  return inline(readFileSync(new URL(file, LUA_DIR), 'utf8'));
}
