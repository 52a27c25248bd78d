import type { ProgressEvent, StreamEvent } from '../shared/core/stream-event.js';
import { stageOfEvent } from '../shared/core/job-stage.js';

/**
 * The SSE wire format of a job stream:
 *   id: <Redis Stream entry id>            (resume with `Last-Event-ID`)
 *   data: {"text": "..."}                  a chunk of the model's answer
 *   event: progress + data: {"stage": ...} queued | waiting | started | streaming | validating | retrying |
 *                                          restarted | delayed, with `jobStage` (job-stage.ts) beside it
 *   data: {"result": AgentResult}          the final answer, then
 *   data: {"error": "...", "state": ...}   or the final failure, then
 *   data: [DONE]
 * Lines starting with ":" are heartbeats, one every `heartbeatMs`, which the response's `x-heartbeat-ms` header
 * (SSE_HEARTBEAT_HEADER) announces. JSON never contains a raw newline, so every message is one `data:` line.
 */
export const SSE_HEADERS = {
  'content-type': 'text/event-stream; charset=utf-8',
  'cache-control': 'no-cache, no-transform',
  connection: 'keep-alive',
  // nginx buffers proxied responses unless told otherwise.
  'x-accel-buffering': 'no',
} as const;

export const PING_FRAME = ': ping\n\n';
export const DONE_FRAME = 'data: [DONE]\n\n';

function frame(data: unknown, id?: string, event?: string): string {
  return `${id ? `id: ${id}\n` : ''}${event ? `event: ${event}\n` : ''}data: ${JSON.stringify(data)}\n\n`;
}

/** Every progress frame names the job's stage too (entries written before `jobStage` existed get it here). */
export function progressFrame(p: ProgressEvent, id?: string): string {
  return frame({ ...p, jobStage: p.jobStage ?? stageOfEvent(p.stage) }, id, 'progress');
}

export function eventFrame(e: StreamEvent, id?: string): string {
  switch (e.kind) {
    case 'text':
      return frame({ text: e.text }, id);
    case 'progress':
      return progressFrame(e.progress, id);
    case 'result':
      return frame({ result: e.result }, id);
    case 'error':
      return frame({ error: e.error, state: e.state }, id);
  }
}
