import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Registry } from 'prom-client';
import { describe, expect, it } from 'vitest';
import { README_TABLE_END, README_TABLE_START, toTargetsMarkdown, type BenchReport } from '../bench/lib/report.js';
import { defaultPipelines } from '../src/app/features/orchestration.js';
import { BULL_BOARD_PATH } from '../src/producers/bull-board.js';
import { DOCS_PATH } from '../src/producers/openapi.js';
import type { RouteSpec } from '../src/producers/route-spec.js';
import { routeTable } from '../src/producers/route-table.js';
import { createScrapeGauges } from '../src/producers/scrape-gauges.js';
import { createOpsMetrics } from '../src/shared/ops/metrics.js';
import { defaultPresets } from '../src/shared/orchestration/presets.js';

/*
 * The docs against the code they describe, read from the code itself (the route table, the metric
 * registries), so a route, a metric or a file added, renamed or removed on one side fails here until the
 * other follows. No Redis, no database: nothing is started. The OpenAPI document's own agreement with the
 * registered routes is test/openapi.test.ts's.
 */

const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..');
const read = (path: string) => readFileSync(join(ROOT, path), 'utf8');
const README = read('README.md');
const ARCHITECTURE = read('ARCHITECTURE.md');
const OPS_README = read('src/shared/ops/README.md');

/** The lines of a markdown section, from its heading to the next heading of the same or a higher level. */
function section(doc: string, heading: string): string[] {
  const lines = doc.split('\n');
  const start = lines.indexOf(heading);
  if (start < 0) throw new Error(`no "${heading}" heading`);
  const level = heading.indexOf(' ');
  const end = lines.findIndex((l, i) => i > start && /^#+ /.test(l) && l.indexOf(' ') <= level);
  return lines.slice(start + 1, end < 0 ? undefined : end);
}

type Method = 'GET' | 'POST' | 'PUT' | 'DELETE';
const key = (method: string, url: string) => `${method} ${url}`;

describe('README API table and the route table', () => {
  // Flows and pipelines get one route per preset and per pipeline: built from the ones the app ships, and
  // once more from a placeholder named `:name`, the form the README may document such a route by instead.
  const flowArea = (names: (n: string) => string) =>
    routeTable.flows({ presets: defaultPresets.map((p) => ({ ...p, name: names(p.name) })), pipelines: defaultPipelines.map((p) => ({ ...p, name: names(p.name) })) });
  const placeholders = flowArea(() => ':name');
  const templated = new Map(flowArea((n) => n).map((r, i) => [key(r.method, r.url), key(r.method, placeholders[i].url)]));

  const tableRoutes: RouteSpec<any>[] = Object.entries(routeTable).flatMap(([area, rows]): RouteSpec<any>[] => {
    if (area === 'flows') return flowArea((n) => n);
    // An area built some other way (a function of its own) must be built here too, not skipped.
    if (!Array.isArray(rows)) throw new Error(`route table area ${area} is not a list of rows: build it in this test`);
    return rows;
  });
  const inTable = new Set(tableRoutes.map((r) => key(r.method, r.url)));

  /**
   * The route cells of the API table: `METHOD /path` (a query string after `?` is the path's), `GET`/`PUT /path`
   * for two methods, and a path alone for a surface mounted whole (Bull Board, the docs page). A cell that
   * yields none is a row this parser no longer reads, and fails.
   */
  const documented = (() => {
    const lines = section(README, '## HTTP API');
    const header = lines.findIndex((l) => /^\| route \| what it does \|$/.test(l));
    expect(header, 'the README API table header').toBeGreaterThan(-1);
    const rows = lines.slice(header + 2).filter((_, i, all) => all.slice(0, i + 1).every((l) => l.startsWith('|')));
    const routes: Array<{ method?: Method; path: string }> = [];
    for (const row of rows) {
      const cell = row.split(/(?<!\\)\|/)[1].replace(/`([A-Z]+)`\/`([A-Z]+) ([^`\s]+)`/g, '`$1 $3`, `$2 $3`');
      const found = [...cell.matchAll(/`([^`]+)`/g)].flatMap(([, span]) => {
        const m = /^(?:(GET|POST|PUT|DELETE) )?(\/[^\s?]*)(?:\?\S*)?$/.exec(span);
        if (!m) {
          expect(span, `an unreadable route in the README row ${row.slice(0, 80)}`).not.toMatch(/^(?:[A-Z]+ )?\//);
          return [];
        }
        return [{ ...(m[1] ? { method: m[1] as Method } : {}), path: m[2] }];
      });
      expect(found.length, `no route read from the README row ${row.slice(0, 80)}`).toBeGreaterThan(0);
      routes.push(...found);
    }
    return routes;
  })();

  it('reads a plausible number of routes on both sides', () => {
    expect(inTable.size).toBeGreaterThan(30);
    expect(documented.length).toBeGreaterThan(30);
    // Positive controls: the parsers see a plain row, a row of several routes, a two-method row and a generated route.
    expect(documented).toEqual(
      expect.arrayContaining([
        { method: 'POST', path: '/v1/jobs' },
        { method: 'DELETE', path: '/v1/dlq/:id' },
        { method: 'PUT', path: '/admin/orgs/:org/plan' },
        { method: 'POST', path: '/v1/flows/dashboard' },
      ]),
    );
    expect(inTable).toContain('POST /v1/pipelines/wizard_completion');
  });

  it('documents every route of the route table with its method', () => {
    const keys = new Set(documented.filter((r) => r.method).map((r) => key(r.method!, r.path)));
    const missing = [...inTable].filter((k) => !keys.has(k) && !keys.has(templated.get(k) ?? ''));
    expect(missing).toEqual([]);
  });

  it('documents no route the route table does not have', () => {
    const routable = new Set([...inTable, ...templated.values()]);
    const phantom = documented.filter((r) => (r.method ? !routable.has(key(r.method, r.path)) : ![BULL_BOARD_PATH, DOCS_PATH].includes(r.path)));
    expect(phantom).toEqual([]);
    // A mount named without a method is Bull Board's or the docs page's: a route of the table needs its method.
    expect(documented.filter((r) => !r.method).map((r) => r.path).sort()).toEqual([BULL_BOARD_PATH, DOCS_PATH].sort());
  });
});

describe('ops README metrics list and the metric registries', () => {
  /** Every metric the code registers with prom-client: the ops metrics and the gauges read at scrape (all of them enabled). */
  const registered = [
    ...createOpsMetrics(new Registry()).registry.getMetricsAsArray(),
    ...createScrapeGauges({
      queues: [],
      agentQueues: [],
      breakerState: async () => ({ state: 'closed' }),
      breakerKeys: async () => [],
      orgGauges: async () => [],
      usageBacklog: async () => 0,
    }).getMetricsAsArray(),
  ].map((m) => ({ name: m.name, labels: ((m as unknown as { labelNames?: string[] }).labelNames ?? []).slice().sort() }));
  // prom-client's Node and process defaults, registered when the process has an id (as every served process does).
  const defaults = new Set(createOpsMetrics(new Registry(), { processId: 'docs-drift' }).registry.getMetricsAsArray().map((m) => m.name));

  /** Each metric named in the bullet list of "## Metrics", with the label names it shows (`{a,b="x"}` -> a, b). */
  const listed = (() => {
    const lines = section(OPS_README, '## Metrics');
    const first = lines.findIndex((l) => l.startsWith('- '));
    const list = lines.slice(first, lines.findIndex((l, i) => i > first && l.trim() === ''));
    const names = new Map<string, string[] | undefined>();
    for (const [, name, labels] of list.join('\n').matchAll(/`((?:agentq|nodejs|process)_[a-z0-9_]+)(?:\{([^}`]*)\})?`/g)) {
      // A later mention without labels (`apart from agentq_cost_usd_total`) keeps the labels shown first.
      if (labels !== undefined || !names.has(name)) names.set(name, labels?.split(',').map((l) => l.split('=')[0].trim()).sort());
    }
    return names;
  })();
  const ours = [...listed.keys()].filter((n) => n.startsWith('agentq_'));

  it('reads a plausible number of metrics on both sides', () => {
    expect(registered.length).toBeGreaterThan(20);
    expect(ours.length).toBeGreaterThan(20);
    expect(defaults.size).toBeGreaterThan(registered.length);
    expect(registered.map((m) => m.name)).toEqual(expect.arrayContaining(['agentq_job_duration_seconds', 'agentq_queue_jobs', 'agentq_org_throttled_seconds']));
  });

  it('lists every registered metric', () => {
    expect(registered.filter((m) => !listed.has(m.name)).map((m) => m.name)).toEqual([]);
  });

  it('lists no metric the code does not register, with the labels the code gives it', () => {
    const names = new Set(registered.map((m) => m.name));
    expect(ours.filter((n) => !names.has(n))).toEqual([]);
    // The Node defaults it names are prom-client's names.
    expect([...listed.keys()].filter((n) => !n.startsWith('agentq_') && !defaults.has(n))).toEqual([]);
    const wrongLabels = registered.filter((m) => listed.get(m.name) && listed.get(m.name)!.join() !== m.labels.join())
      .map((m) => `${m.name}: code {${m.labels.join()}}, docs {${listed.get(m.name)!.join()}}`);
    expect(wrongLabels).toEqual([]);
  });
});

describe('files named in README.md, ARCHITECTURE.md and the ops README', () => {
  const docs = { 'README.md': README, 'ARCHITECTURE.md': ARCHITECTURE, 'src/shared/ops/README.md': OPS_README };
  const LUA = 'src/shared/infra/lua';

  /** Whether a documented path exists: `x.js` is the ESM import of `x.ts`, a `*` matches within one segment. */
  function exists(path: string): boolean {
    if (path.includes('*')) {
      const dir = dirname(path);
      const pattern = new RegExp(`^${path.slice(dir.length + 1).replace(/[.+^${}()|[\]\\]/g, '\\$&').replace(/\*/g, '[^/]*')}$`);
      return existsSync(join(ROOT, dir)) && readdirSync(join(ROOT, dir)).some((f) => pattern.test(f));
    }
    return existsSync(join(ROOT, path)) || (path.endsWith('.js') && existsSync(join(ROOT, path.replace(/\.js$/, '.ts'))));
  }

  const named = Object.entries(docs).flatMap(([doc, text]) => {
    const paths = [...text.matchAll(/(?<![\w./-])((?:src|test)\/[\w./*-]*[\w/*])/g)].map((m) => m[1]);
    const scripts = [...text.matchAll(/(?<![\w-])([a-z][a-z0-9-]*-(?:\d+|N)\.lua)\b/g)].map((m) => `${LUA}/${m[1]}`);
    const includes = [...text.matchAll(/(?<![\w/-])lua\/includes\/([\w*-]+\.lua)\b/g)].map((m) => `${LUA}/includes/${m[1]}`);
    return [...new Set([...paths, ...scripts, ...includes])].map((path) => ({ doc, path }));
  });

  it('reads a plausible number of test files, sources and scripts', () => {
    const count = (re: RegExp) => new Set(named.filter((n) => re.test(n.path)).map((n) => n.path)).size;
    expect(count(/^test\/.*\.test\.ts$/)).toBeGreaterThan(50);
    expect(count(/^src\/(?!shared\/infra\/lua\/)/)).toBeGreaterThan(50);
    expect(count(/^src\/shared\/infra\/lua\/[^/]+-(\d+|N)\.lua$/)).toBeGreaterThan(15);
  });

  it('names only files that exist', () => {
    expect(named.filter((n) => !exists(n.path))).toEqual([]);
  });
});

describe('README benchmark table and the last full run', () => {
  // The table is written from bench/results/latest.json by `npm run bench:readme`; a figure typed into it by hand,
  // or a new full run not carried into it, differs here.
  it('is the targets table bench/results/latest.json renders', () => {
    const report = JSON.parse(read('bench/results/latest.json')) as BenchReport;
    const start = README.indexOf(README_TABLE_START);
    const end = README.indexOf(README_TABLE_END);
    expect(start, 'the README bench-targets start marker').toBeGreaterThan(-1);
    expect(end, 'the README bench-targets end marker').toBeGreaterThan(start);
    expect(README.slice(start + README_TABLE_START.length + 1, end)).toBe(toTargetsMarkdown(report));
  });

  it('quotes a full run: every case of the default run has a figure', () => {
    const report = JSON.parse(read('bench/results/latest.json')) as BenchReport;
    const cases = new Set(report.figures.map((f) => f.case.split(' ')[0]));
    // One figure of each default case (their case labels' leading number or word), so a partial run copied over
    // latest.json by hand is caught too.
    for (const c of ['1', '2', '3', '4', '5', '6', '7', '8', '9', '10', 'cluster', 'tiers']) expect(cases, `case ${c}`).toContain(c);
  });
});
