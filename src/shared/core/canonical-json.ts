/** JSON with object keys sorted at every depth, so inputs that differ only in key order hash alike. */
export function canonicalJson(value: unknown): string {
  return canon(value) ?? 'null';
}

function canon(value: unknown): string | undefined {
  let v = value;
  if (v !== null && typeof v === 'object' && typeof (v as { toJSON?: unknown }).toJSON === 'function') {
    v = (v as { toJSON: () => unknown }).toJSON();
  }
  if (Array.isArray(v)) return `[${v.map((x) => canon(x) ?? 'null').join(',')}]`;
  if (v !== null && typeof v === 'object') {
    const fields: string[] = [];
    for (const k of Object.keys(v).sort()) {
      const s = canon((v as Record<string, unknown>)[k]);
      if (s !== undefined) fields.push(`${JSON.stringify(k)}:${s}`);
    }
    return `{${fields.join(',')}}`;
  }
  return JSON.stringify(v);
}
