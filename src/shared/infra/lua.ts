import { readFileSync } from 'node:fs';
import type { Cluster, Redis } from 'ioredis';

export type RedisClient = Redis | Cluster;

/** A Lua script registered on one client with `defineCommand` (EVALSHA, falling back to EVAL on NOSCRIPT). */
export type LuaCall = (keys: string[], args: Array<string | number>) => Promise<unknown>;

/**
 * Reads `<name>-<numKeys>.lua` from the one Lua folder and defines it as a command on `redis`.
 * A file named `-N.lua` takes a variable number of keys: the count is sent with each call.
 * Command names are namespaced (`agentq:...` is not a valid JS identifier, so `agentq_` is used)
 * so they never clash with scripts that libraries such as rate-limiter-flexible define on the same client.
 */
export function defineLua(redis: RedisClient, file: string): LuaCall {
  const match = /^(.+)-(\d+|N)\.lua$/.exec(file);
  if (!match) throw new Error(`Lua file name must be <name>-<numKeys>.lua: ${file}`);
  const fixedKeys = match[2] === 'N' ? undefined : Number(match[2]);
  const command = `agentq_${match[1].replace(/[^a-zA-Z0-9]/g, '_')}`;
  const lua = readLua(file);
  redis.defineCommand(command, fixedKeys === undefined ? { lua } : { lua, numberOfKeys: fixedKeys });
  const fn = (redis as unknown as Record<string, (...a: Array<string | number>) => Promise<unknown>>)[command].bind(redis);
  return (keys, args) => {
    if (fixedKeys !== undefined && keys.length !== fixedKeys) {
      return Promise.reject(new Error(`${file} takes ${fixedKeys} keys, got ${keys.length}`));
    }
    return fixedKeys === undefined ? fn(keys.length, ...keys, ...args) : fn(...keys, ...args);
  };
}

/** Every Lua script of the project lives in this one folder, named `<name>-<numKeys>.lua`. */
export const LUA_DIR = new URL('./lua/', import.meta.url);

const INCLUDE = /^--- @include "([a-z0-9-]+)"$/gm;

/**
 * A script's source with its includes inlined. Redis Lua has no `require`: a part two scripts share lives
 * in `lua/includes/<name>.lua` and is pasted where a script says `--- @include "<name>"` (BullMQ's own
 * convention for its scripts), once per script.
 */
export function readLua(file: string): string {
  const seen = new Set<string>();
  return readFileSync(new URL(file, LUA_DIR), 'utf8').replace(INCLUDE, (_line, name: string) => {
    if (seen.has(name)) return '';
    seen.add(name);
    return readFileSync(new URL(`includes/${name}.lua`, LUA_DIR), 'utf8');
  });
}
