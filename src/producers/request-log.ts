import { LogController, type FastifyReply, type FastifyRequest } from 'fastify';

const quiet = (req: FastifyRequest) => req.routeOptions?.config?.quiet === true;

/**
 * Fastify's request log lines, with probes and scrapes (`quiet` routes: /healthz, /readyz, /metrics) at debug:
 * they arrive every few seconds from load balancers and Prometheus and would bury the lines that matter.
 * Errors are logged as usual.
 */
export class RequestLog extends LogController {
  override incomingRequest(request: FastifyRequest, reply: FastifyReply, metadata?: unknown): void {
    if (!quiet(request)) return super.incomingRequest(request, reply, metadata as never);
    if (!this.isLogDisabled(request)) request.log.debug({ req: request }, 'incoming request');
  }

  override requestCompleted(error: Error | null | undefined, request: FastifyRequest, reply: FastifyReply, metadata?: unknown): void {
    if (error || !quiet(request)) return super.requestCompleted(error as never, request, reply, metadata as never);
    if (!this.isLogDisabled(request)) reply.log.debug({ res: reply, responseTime: reply.elapsedTime }, 'request completed');
  }
}
