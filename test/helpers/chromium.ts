import { existsSync, mkdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { chromium, type Browser } from 'playwright-core';

/** Debian's Chromium, never a downloaded browser; the same flags as test/bull-board-browser.test.ts. */
export const CHROMIUM = '/usr/bin/chromium';
export const CHROMIUM_FLAGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update', '--disable-sync', '--no-first-run'];

export async function launchChromium(): Promise<Browser> {
  // Never skipped: a machine without the system Chromium fails here, loudly.
  if (!existsSync(CHROMIUM)) throw new Error(`Chromium is missing at ${CHROMIUM}; install it with \`apt-get update && apt-get install -y chromium\``);
  return chromium.launch({ executablePath: CHROMIUM, args: CHROMIUM_FLAGS, headless: true });
}

/** Where tests save screenshots: AGENTQ_ARTIFACTS_DIR, else a folder in the system temp dir. */
export function artifactPath(name: string): string {
  const dir = process.env.AGENTQ_ARTIFACTS_DIR ?? join(tmpdir(), 'agentq-artifacts');
  mkdirSync(dir, { recursive: true });
  return join(dir, name);
}
