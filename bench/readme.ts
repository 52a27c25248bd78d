/**
 * `npm run bench:readme`: writes the README's benchmark targets table from bench/results/latest.json (the last full
 * run), between its markers. `test/docs-drift.test.ts` fails while the two differ.
 */
import { readFileSync, writeFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { RESULTS_DIR, toTargetsMarkdown, withReadmeTable, type BenchReport } from './lib/report.js';

const readmePath = fileURLToPath(new URL('../README.md', import.meta.url));
const report = JSON.parse(readFileSync(`${RESULTS_DIR}latest.json`, 'utf8')) as BenchReport;
writeFileSync(readmePath, withReadmeTable(readFileSync(readmePath, 'utf8'), toTargetsMarkdown(report)));
console.log(`README.md: targets table of the run of ${report.startedAt} written`);
