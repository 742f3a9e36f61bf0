// Server-sent events over fetch: turns a response body (a ReadableStream of bytes) into the
// `data:` payloads of its events. EventSource cannot send an Authorization header or a POST body,
// hence this small parser (https://html.spec.whatwg.org/multipage/server-sent-events.html).

/**
 * Yields the data of each event in `body`, a string (multi-line data joined with "\n").
 * Comments (": ping") and events without data are skipped; other fields (event, id, retry)
 * are not used by the OpenAI streaming format and are ignored.
 * @param {ReadableStream<Uint8Array>} body
 * @returns {AsyncGenerator<string>}
 */
export async function* readEvents(body) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  const parser = new EventParser();
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      yield* parser.push(value);
    }
    yield* parser.push("\n\n"); // a last event without its blank line still counts
  } finally {
    reader.releaseLock();
  }
}

/** Incremental SSE line parser: feed it text in chunks of any size, get whole events out. */
export class EventParser {
  constructor() {
    this.buffer = "";
    this.data = [];
  }

  /**
   * @param {string} text the next piece of the stream
   * @returns {string[]} the data of every event completed by this piece
   */
  push(text) {
    this.buffer += text;
    const events = [];
    // A line ends at \r\n, \n or \r. A trailing \r may be the first half of \r\n: wait for more.
    const lines = this.buffer.split(/\r\n|\n|\r(?!$)/);
    this.buffer = lines.pop();
    for (const line of lines) {
      if (line === "") {
        if (this.data.length) events.push(this.data.join("\n"));
        this.data = [];
      } else if (line.startsWith("data:")) {
        this.data.push(line.slice(line.startsWith("data: ") ? 6 : 5));
      }
      // Field lines other than data, and ":" comments, are ignored on purpose.
    }
    return events;
  }
}
