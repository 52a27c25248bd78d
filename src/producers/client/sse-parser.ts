/** One Server-Sent Events message (or heartbeat comment). */
export interface SseMessage {
  /** The `id:` of this message; undefined when it had none. */
  id?: string;
  /** `message` unless an `event:` line named it. */
  event: string;
  data: string;
}

/**
 * An incremental SSE parser after the WHATWG algorithm: feed it text as it arrives, in pieces cut
 * anywhere, and it returns the messages completed so far. Dependency-free, so the HTTP client can use it.
 */
export function createSseParser() {
  let buffer = '';
  let data: string[] = [];
  let event = '';
  let id: string | undefined;
  let sawField = false;

  function line(text: string, out: SseMessage[]): void {
    if (text === '') {
      if (sawField && data.length > 0) out.push({ ...(id !== undefined ? { id } : {}), event: event || 'message', data: data.join('\n') });
      data = [];
      event = '';
      id = undefined;
      sawField = false;
      return;
    }
    if (text.startsWith(':')) return;
    const colon = text.indexOf(':');
    const field = colon < 0 ? text : text.slice(0, colon);
    let value = colon < 0 ? '' : text.slice(colon + 1);
    if (value.startsWith(' ')) value = value.slice(1);
    sawField = true;
    if (field === 'data') data.push(value);
    else if (field === 'event') event = value;
    else if (field === 'id' && !value.includes('\0')) id = value;
  }

  return {
    feed(chunk: string): SseMessage[] {
      buffer += chunk;
      const out: SseMessage[] = [];
      for (;;) {
        const m = /\r\n|\r|\n/.exec(buffer);
        // A lone \r at the end may be the first half of \r\n: wait for more.
        if (!m || (m[0] === '\r' && m.index === buffer.length - 1)) break;
        line(buffer.slice(0, m.index), out);
        buffer = buffer.slice(m.index + m[0].length);
      }
      return out;
    },
  };
}
