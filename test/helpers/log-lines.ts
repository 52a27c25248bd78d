/**
 * The keys a JSON log line's top-level object names more than once. JSON.parse keeps the last and hides the
 * others; pino writes a child's bindings and a call's fields side by side, so a field bound twice is written twice.
 */
export function duplicateKeys(line: string): string[] {
  const seen = new Set<string>();
  const dups: string[] = [];
  let depth = 0;
  for (let i = 0; i < line.length; i++) {
    const c = line[i];
    if (c === '{' || c === '[') depth++;
    else if (c === '}' || c === ']') depth--;
    else if (c === '"') {
      let end = i + 1;
      while (line[end] !== '"') end += line[end] === '\\' ? 2 : 1;
      // A string at the top level followed by ':' is a key (pino writes no whitespace).
      if (depth === 1 && line[end + 1] === ':') {
        const key = JSON.parse(line.slice(i, end + 1)) as string;
        if (seen.has(key)) dups.push(key);
        seen.add(key);
      }
      i = end;
    }
  }
  return dups;
}
