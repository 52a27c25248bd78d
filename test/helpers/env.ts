import { randomUUID } from 'node:crypto';
import { inject } from 'vitest';

export const redisUrl = (): string => inject('redisUrl');
export const databaseUrl = (): string => inject('databaseUrl');

/** A fresh queue prefix per test file, with a hash tag so it is Redis-Cluster safe. */
export const randomPrefix = (): string => `{t${randomUUID().slice(0, 8)}}`;
export const randomOrg = (): string => `org_${randomUUID().slice(0, 8)}`;
