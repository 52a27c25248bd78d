import { mkdirSync, writeFileSync } from 'node:fs';
import { cpus, loadavg } from 'node:os';
import { fileURLToPath } from 'node:url';

/** One measured figure. `met` is undefined when the figure has no target, null when it could not be measured. */
export interface Figure {
  case: string;
  name: string;
  value: number | string | null;
  unit: string;
  target?: string;
  met?: boolean | null;
  note?: string;
}

export interface BenchReport {
  startedAt: string;
  finishedAt: string;
  durationS: number;
  machine: { cpus: number; cpuModel: string; loadAvgAtStart: number[]; loadAvgAtEnd: number[]; node: string; redis: string };
  figures: Figure[];
  errors: Array<{ case: string; error: string }>;
}

export const RESULTS_DIR = fileURLToPath(new URL('../results/', import.meta.url));

export function machineInfo(redisVersion: string) {
  return { cpus: cpus().length, cpuModel: cpus()[0]?.model ?? 'unknown', loadAvg: loadavg().map((n) => Math.round(n * 100) / 100), node: process.version, redis: redisVersion };
}

function cell(v: unknown): string {
  return String(v ?? '').replaceAll('|', '\\|').replaceAll('\n', ' ');
}

function status(f: Figure): string {
  if (f.value === null) return 'not available';
  if (f.met === undefined) return '';
  if (f.met === null) return 'n/a';
  return f.met ? 'met' : '**missed**';
}

function show(f: Figure): string {
  if (f.value === null) return 'not available';
  return `${f.value}${f.unit ? ` ${f.unit}` : ''}`;
}

export function toMarkdown(r: BenchReport): string {
  const lines = [
    `Measured ${r.startedAt} in ${r.durationS} s on ${r.machine.cpus} × ${r.machine.cpuModel}, Node ${r.machine.node}, Redis ${r.machine.redis};`,
    `load average ${r.machine.loadAvgAtStart.join(' / ')} at start, ${r.machine.loadAvgAtEnd.join(' / ')} at end. Every figure comes from one run on one`,
    'private redis-server, an embedded PGlite in its own process and the Gemini emulator in its own process, so compare ratios rather than absolute numbers.',
    '',
    '| Case | Figure | Value | Target | Status | Notes |',
    '| --- | --- | --- | --- | --- | --- |',
    ...r.figures.map((f) => `| ${cell(f.case)} | ${cell(f.name)} | ${cell(show(f))} | ${cell(f.target ?? '')} | ${status(f)} | ${cell(f.note ?? '')} |`),
  ];
  if (r.errors.length) {
    lines.push('', 'Cases that crashed:', '', ...r.errors.map((e) => `- ${e.case}: ${e.error}`));
  }
  return lines.join('\n') + '\n';
}

export function writeReport(r: BenchReport): { json: string; md: string } {
  mkdirSync(RESULTS_DIR, { recursive: true });
  const json = `${RESULTS_DIR}latest.json`;
  const md = `${RESULTS_DIR}latest.md`;
  writeFileSync(json, JSON.stringify(r, null, 2) + '\n');
  writeFileSync(md, toMarkdown(r));
  return { json, md };
}
