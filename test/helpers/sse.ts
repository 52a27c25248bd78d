import { createSseParser, type SseMessage } from '../../src/producers/client/sse-parser.js';

/**
 * Reads an open SSE response body into `messages` (filled as it reads, so a caller can watch it live) until
 * the server ends it or `stop` says so; returns the raw text read.
 */
export async function readSseBody(res: Response, messages: SseMessage[], stop: (m: SseMessage[]) => boolean = () => false): Promise<string> {
  const parser = createSseParser();
  const decoder = new TextDecoder();
  const reader = res.body!.getReader();
  let raw = '';
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    const text = decoder.decode(value, { stream: true });
    raw += text;
    messages.push(...parser.feed(text));
    if (stop(messages)) break;
  }
  return raw;
}
