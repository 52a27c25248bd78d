import type { FastifyInstance } from 'fastify';

/** Only listens: everything the app needs was built by `buildApp` from injected dependencies. */
export async function listen(app: FastifyInstance, host: string, port: number): Promise<string> {
  return app.listen({ host, port });
}
