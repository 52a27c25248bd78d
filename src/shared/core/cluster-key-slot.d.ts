// The package ioredis itself uses to route keys to slots; it ships no types of its own.
declare module 'cluster-key-slot' {
  /** The Redis Cluster slot (0-16383) of a key, honouring its {hash tag}. */
  export default function calculateSlot(key: string | Buffer): number;
}
