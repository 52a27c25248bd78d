import { createReadStream } from 'node:fs';
import { createInterface } from 'node:readline';
import { ValidationError } from '../core/errors.js';
import { checkDoc, type KnowledgeDoc, type KnowledgeTable } from './knowledge-schemas.js';

/** A bad line of a JSONL file; `line` is 1-based, `field` the offending field when there is one. */
export class JsonlLineError extends ValidationError {
  constructor(
    readonly line: number,
    readonly field: string | undefined,
    reason: string,
  ) {
    super(`line ${line}: ${field ? `field "${field}": ` : ''}${reason}`, [{ path: field ? `line ${line}.${field}` : `line ${line}`, message: reason }]);
  }
}

/**
 * Streams a JSONL file one validated document at a time (blank lines skipped), throwing a
 * JsonlLineError at the first malformed or invalid line, or at an external_id seen on an earlier line.
 */
export async function* readJsonlDocs<T extends KnowledgeTable>(path: string, table: T): AsyncGenerator<{ line: number; doc: KnowledgeDoc<T> }> {
  const lines = createInterface({ input: createReadStream(path, { encoding: 'utf8' }), crlfDelay: Infinity });
  const seen = new Map<string, number>();
  let n = 0;
  try {
    for await (const text of lines) {
      n++;
      if (!text.trim()) continue;
      let raw: unknown;
      try {
        raw = JSON.parse(text);
      } catch (err) {
        throw new JsonlLineError(n, undefined, `malformed JSON (${(err as Error).message})`);
      }
      if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) throw new JsonlLineError(n, undefined, 'expected a JSON object');
      const res = checkDoc(table, raw);
      if (!res.ok) throw new JsonlLineError(n, res.issues[0].path, res.issues[0].message);
      const first = seen.get(res.doc.external_id);
      if (first !== undefined) throw new JsonlLineError(n, 'external_id', `"${res.doc.external_id}" already appears on line ${first}`);
      seen.set(res.doc.external_id, n);
      yield { line: n, doc: res.doc };
    }
  } finally {
    lines.close();
  }
}
