import { readdirSync, readFileSync, readlinkSync } from 'node:fs';

/**
 * The local TCP ports of the sockets process `pid` holds (Linux /proc), so a test can find exactly that
 * process's connections in Redis's CLIENT LIST (by `addr`) and kill only those.
 */
export function localPortsOf(pid: number): Set<number> {
  const inodes = new Set<string>();
  for (const fd of readdirSync(`/proc/${pid}/fd`)) {
    try {
      const m = /^socket:\[(\d+)\]$/.exec(readlinkSync(`/proc/${pid}/fd/${fd}`));
      if (m) inodes.add(m[1]);
    } catch {
      // The fd was closed while we looked.
    }
  }
  const ports = new Set<number>();
  for (const table of ['/proc/net/tcp', '/proc/net/tcp6']) {
    let text = '';
    try {
      text = readFileSync(table, 'utf8');
    } catch {
      continue;
    }
    for (const line of text.split('\n').slice(1)) {
      const cols = line.trim().split(/\s+/);
      if (cols.length < 10 || !inodes.has(cols[9])) continue;
      ports.add(parseInt(cols[1].split(':')[1], 16));
    }
  }
  return ports;
}

/** Ids of the Redis clients (CLIENT LIST) whose source port belongs to `pid`. */
export function redisClientIdsOf(clientList: string, pid: number): string[] {
  const ports = localPortsOf(pid);
  const ids: string[] = [];
  for (const line of clientList.split('\n')) {
    const id = /(?:^| )id=(\d+)/.exec(line)?.[1];
    const port = /(?:^| )addr=[^ ]*:(\d+)/.exec(line)?.[1];
    if (id && port && ports.has(Number(port))) ids.push(id);
  }
  return ids;
}
