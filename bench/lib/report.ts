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

/** Markers around the README's targets table, which `npm run bench:readme` rewrites from `latest.json`. */
export const README_TABLE_START = '<!-- bench-targets:start (npm run bench:readme writes this table from bench/results/latest.json) -->';
export const README_TABLE_END = '<!-- bench-targets:end -->';

/**
 * The README's benchmark table: every figure of one full run that has a target, with its note (the rounds a
 * median was taken over). Rendered from the JSON, so the README cannot quote a figure the run did not measure.
 */
export function toTargetsMarkdown(r: BenchReport): string {
  const withTarget = r.figures.filter((f) => f.target !== undefined);
  const met = withTarget.filter((f) => f.met === true).length;
  const missed = withTarget.filter((f) => f.met === false).length;
  const lines = [
    `Run of ${r.startedAt.slice(0, 16).replace('T', ' ')} UTC, ${r.durationS} s on ${r.machine.cpus} × ${r.machine.cpuModel}, Node ${r.machine.node},`,
    `Redis ${r.machine.redis}; load average ${r.machine.loadAvgAtStart[0]} at its start, ${r.machine.loadAvgAtEnd[0]} at its end: ${met} targets met, ${missed} missed` +
      `${withTarget.length - met - missed ? `, ${withTarget.length - met - missed} not measured` : ''}.`,
    '',
    '| Case | Figure | Value | Target | Status | Notes |',
    '| --- | --- | --- | --- | --- | --- |',
    ...withTarget.map((f) => `| ${cell(f.case)} | ${cell(f.name)} | ${cell(show(f))} | ${cell(f.target)} | ${status(f)} | ${cell(f.note ?? '')} |`),
  ];
  if (r.errors.length) lines.push('', `Cases that crashed: ${r.errors.map((e) => e.case).join(', ')}.`);
  return lines.join('\n') + '\n';
}

/** `README` with the text between the table's markers replaced by `table`; throws when a marker is missing. */
export function withReadmeTable(readme: string, table: string): string {
  const start = readme.indexOf(README_TABLE_START);
  const end = readme.indexOf(README_TABLE_END);
  if (start < 0 || end < start) throw new Error('README.md has no bench-targets markers');
  return `${readme.slice(0, start + README_TABLE_START.length)}\n${table}${readme.slice(end)}`;
}

/**
 * A full run writes `latest.*`, the run the README quotes; a `BENCH_ONLY` subset writes `only-<cases>.*` beside it,
 * so a partial run never replaces the full one's figures.
 */
export function writeReport(r: BenchReport, only?: string[]): { json: string; md: string } {
  mkdirSync(RESULTS_DIR, { recursive: true });
  const base = only ? `only-${only.join('-')}` : 'latest';
  const json = `${RESULTS_DIR}${base}.json`;
  const md = `${RESULTS_DIR}${base}.md`;
  writeFileSync(json, JSON.stringify(r, null, 2) + '\n');
  writeFileSync(md, toMarkdown(r));
  return { json, md };
}
