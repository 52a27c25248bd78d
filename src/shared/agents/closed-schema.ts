/** A JSON Schema node (as registry.ts's JsonSchema; not imported, to keep the two files acyclic). */
type JsonSchema = Record<string, unknown>;

/**
 * Marks the object schemas of an action's published input JSON Schema `additionalProperties: false`: the
 * API refuses unknown input fields (unknown-fields.ts), and zod's `io: 'input'` conversion leaves plain
 * objects open, so without this the schema would promise what the API refuses. Left open: objects a schema
 * already opens or closes itself (`z.looseObject`, records), the objects `passthrough` names (same dotted
 * paths, `*` for any array index or key), and the branches of an `allOf` (each closed branch would refuse
 * the other's fields).
 */
export function closeInputSchema(schema: JsonSchema, passthrough: readonly string[] = []): JsonSchema {
  const patterns = passthrough.map((p) => p.split('.').filter(Boolean));
  const open = (path: string[]) => patterns.some((p) => p.length === path.length && p.every((seg, i) => seg === '*' || seg === path[i]));
  // `$defs` are reached through `$ref` from paths not known here: closed only when nothing is passthrough.
  const defsOpen = patterns.length > 0;

  function walk(node: unknown, path: string[] | undefined): unknown {
    if (!node || typeof node !== 'object' || Array.isArray(node)) return node;
    const s = { ...(node as JsonSchema) };
    const at = (seg: string) => (path ? [...path, seg] : undefined);
    if (s.properties && typeof s.properties === 'object') {
      s.properties = Object.fromEntries(Object.entries(s.properties as JsonSchema).map(([k, v]) => [k, walk(v, at(k))]));
    }
    if (s.items) s.items = Array.isArray(s.items) ? s.items.map((v) => walk(v, at('*'))) : walk(s.items, at('*'));
    if (Array.isArray(s.prefixItems)) s.prefixItems = s.prefixItems.map((v) => walk(v, at('*')));
    if (s.additionalProperties && typeof s.additionalProperties === 'object') s.additionalProperties = walk(s.additionalProperties, at('*'));
    for (const k of ['anyOf', 'oneOf'] as const) if (Array.isArray(s[k])) s[k] = (s[k] as unknown[]).map((v) => walk(v, path));
    if (s.$defs && typeof s.$defs === 'object') {
      s.$defs = Object.fromEntries(Object.entries(s.$defs as JsonSchema).map(([k, v]) => [k, walk(v, defsOpen ? undefined : [])]));
    }
    const isObject = s.type === 'object' || (s.type === undefined && s.properties !== undefined);
    const closable = path !== undefined && !open(path);
    if (isObject && s.additionalProperties === undefined && s.patternProperties === undefined && closable) s.additionalProperties = false;
    return s;
  }
  return walk(schema, []) as JsonSchema;
}
