/**
 * The dependency rule of agentq (ARCHITECTURE.md): app -> producers | workers -> shared; producers and
 * workers never import each other; inside shared, core imports nothing else; nothing imports app but
 * main; the client imports only shared/core (and types); no cycles, type-only imports included.
 */
module.exports = {
  forbidden: [
    { name: 'no-cycles', severity: 'error', from: {}, to: { circular: true } },
    { name: 'producers-not-workers', severity: 'error', from: { path: '^src/producers/' }, to: { path: '^src/workers/' } },
    { name: 'workers-not-producers', severity: 'error', from: { path: '^src/workers/' }, to: { path: '^src/producers/' } },
    { name: 'shared-stands-alone', severity: 'error', from: { path: '^src/shared/' }, to: { path: '^src/(producers|workers|app)/|^src/main\\.ts$|^dev/' } },
    { name: 'core-imports-nothing-else', severity: 'error', from: { path: '^src/shared/core/' }, to: { path: '^src/', pathNot: '^src/shared/core/' } },
    { name: 'only-main-imports-app', severity: 'error', from: { path: '^src/', pathNot: '^src/(app/|main\\.ts$)' }, to: { path: '^src/app/' } },
    // Agent and flow types make the client typed; type-only imports pull no agent code, zod or Redis into a service.
    { name: 'client-imports-only-core', severity: 'error', from: { path: '^src/producers/client/' }, to: { path: '^src/', pathNot: '^src/(producers/client|shared/core)/', dependencyTypesNot: ['type-only'] } },
    { name: 'product-not-dev-tools', severity: 'error', from: { path: '^src/', pathNot: '^src/app/' }, to: { path: '^dev/' } },
  ],
  options: {
    doNotFollow: { path: 'node_modules' },
    exclude: { path: 'node_modules' },
    tsPreCompilationDeps: true,
    tsConfig: { fileName: 'tsconfig.json' },
    enhancedResolveOptions: { extensions: ['.ts', '.js'] },
  },
};
