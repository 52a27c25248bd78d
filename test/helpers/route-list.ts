export interface RegisteredRoute {
  method: string;
  /** Fastify's form: `/v1/jobs/:id`. */
  path: string;
}

/**
 * Every route of an app, read from `app.printRoutes({ commonPrefix: false })`: each tree line adds a
 * segment to its parent's path and lists its methods. HEAD and OPTIONS (fastify's automatic ones) are left
 * out.
 */
export function registeredRoutes(tree: string): RegisteredRoute[] {
  const stack: string[] = [];
  const routes: RegisteredRoute[] = [];
  for (const line of tree.split('\n')) {
    const m = /^(.*?)(?:├── |└── )(.*)$/.exec(line);
    if (!m) continue;
    const depth = Array.from(m[1]).length / 4;
    const methods = /^(.*) \(([^)]*)\)$/.exec(m[2]);
    stack.length = depth;
    stack[depth] = methods ? methods[1] : m[2];
    if (!methods || methods[2] === '-') continue;
    for (const method of methods[2].split(',').map((x) => x.trim())) {
      if (method !== 'HEAD' && method !== 'OPTIONS') routes.push({ method, path: stack.join('') });
    }
  }
  return routes;
}

/** `/v1/jobs/:id/` -> `/v1/jobs/{id}`, the form OpenAPI paths take. */
export const openApiPath = (path: string) => path.replace(/:(\w+)/g, '{$1}').replace(/(.)\/$/, '$1');
