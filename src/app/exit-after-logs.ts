/**
 * Ends the process once the log lines written so far are out, in order, or after `cutMs` whatever is left open.
 *
 * pino's default destination (sonic-boom on fd 1) writes asynchronously, on libuv's thread pool, and its
 * `flush(cb)` answers at once at `minLength` 0 (the default), even with a write in flight. A `process.exit` then
 * wrote the lines still buffered synchronously (pino's exit hook) before the one in flight, which the pool
 * finished as the process ended: the shutdown's last line, `stopped`, came out before the line it followed (a
 * test read `shutting down...` last, with exit code 0, beside two CPU hogs and once on a quiet machine). Here the
 * exit code is set and the event loop left to empty: the write in flight keeps it alive and the buffered lines
 * follow it. A handle something left open would keep it alive for ever, so an unref'd timer exits after `cutMs`.
 */
export function createExitAfterLogs(cutMs = 1000, exit: (code: number) => void = (code) => process.exit(code)) {
  let cut: NodeJS.Timeout | undefined;
  let last = 0;
  return (code: number): void => {
    process.exitCode = last = code;
    if (cut) return;
    // The last code asked for, as a natural end would use process.exitCode.
    cut = setTimeout(() => exit(last), cutMs);
    cut.unref();
  };
}
