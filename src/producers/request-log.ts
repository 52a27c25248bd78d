import { LogController, type FastifyReply, type FastifyRequest } from 'fastify';

const quiet = (req: FastifyRequest) => req.routeOptions?.config?.quiet === true;

/**
 * Fastify's request log lines, with probes and scrapes (`quiet` routes: /healthz, /readyz, /metrics) at debug:
 * they arrive every few seconds from load balancers and Prometheus and would bury the lines that matter.
 * Errors are logged as usual.
 *
 * `deferIncoming` (tracing on): fastify writes `incoming request` as it builds the request, before any hook, so
 * before the request's span starts, and the line would carry no trace_id. The line is then held back and written
 * by `writeIncoming`, which the app calls from an onRequest hook that runs inside the span (and from its
 * frameworkErrors handler, for the requests fastify answers without running hooks).
 */
export class RequestLog extends LogController {
  private readonly deferIncoming: boolean;
  private readonly pending = new WeakSet<FastifyRequest>();

  constructor(opts: ConstructorParameters<typeof LogController>[0] & { deferIncoming?: boolean } = {}) {
    const { deferIncoming, ...rest } = opts ?? {};
    super(rest);
    this.deferIncoming = deferIncoming === true;
  }

  override incomingRequest(request: FastifyRequest, reply: FastifyReply, metadata?: unknown): void {
    if (this.deferIncoming) {
      this.pending.add(request);
      return;
    }
    this.incoming(request, reply, metadata);
  }

  /** Writes a held-back `incoming request` line (once; nothing when none is held back). */
  writeIncoming(request: FastifyRequest, reply: FastifyReply): void {
    if (this.pending.delete(request)) this.incoming(request, reply);
  }

  private incoming(request: FastifyRequest, reply: FastifyReply, metadata?: unknown): void {
    if (!quiet(request)) return super.incomingRequest(request, reply, metadata as never);
    if (!this.isLogDisabled(request)) request.log.debug({ req: request }, 'incoming request');
  }

  override requestCompleted(error: Error | null | undefined, request: FastifyRequest, reply: FastifyReply, metadata?: unknown): void {
    if (error || !quiet(request)) return super.requestCompleted(error as never, request, reply, metadata as never);
    if (!this.isLogDisabled(request)) reply.log.debug({ res: reply, responseTime: reply.elapsedTime }, 'request completed');
  }
}
