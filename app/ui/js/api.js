// The gateway's HTTP API as the UI uses it: one client object, errors as ApiError, and the
// chat stream as a sequence of plain events. Every request goes to the page's own origin.

import { readEvents } from "./sse.js";
import { ThinkTagSplitter } from "./reasoning.js";

/** An error answered by the gateway (or the network), in words a person can act on. */
export class ApiError extends Error {
  /**
   * @param {string} message the gateway's own message
   * @param {{status?: number, type?: string, code?: string, retryAfter?: number|null}} info
   */
  constructor(message, { status = 0, type = "", code = "", retryAfter = null } = {}) {
    super(message);
    this.name = "ApiError";
    this.status = status;
    this.type = type;
    this.code = code;
    this.retryAfter = retryAfter;
  }

  /** A sentence for the transcript: what happened and what the user can do. */
  get plainWords() {
    const detail = this.message ? ` (${this.message.replace(/\.$/, "")})` : "";
    if (this.status === 401) return "Your API key was not accepted. Sign in again with a valid key.";
    if (this.code === "insufficient_quota") {
      return `This key has used up its budget, so the request was not run${detail}.`;
    }
    if (this.status === 429) {
      const wait = this.retryAfter ? ` Try again in ${this.retryAfter} s.` : " Try again in a moment.";
      return `Too many requests right now: the rate limit was reached.${wait}`;
    }
    if (this.status === 503) return `The model engine is not available at the moment${detail}. Try again shortly.`;
    if (this.status === 413) return `The request is too large${detail}. Try smaller or fewer images.`;
    if (this.status === 0) return `Could not reach the gateway${detail}. Check your connection and retry.`;
    if (this.status >= 500) return `The gateway failed to answer${detail}.`;
    return `The request was refused${detail}.`;
  }
}

/** Builds an ApiError from an error response, whatever its body. */
async function errorFrom(response) {
  let error = {};
  try {
    error = (await response.json()).error || {};
  } catch {
    // Not the gateway's JSON shape (a proxy's HTML page, say): fall back to the status line.
  }
  const retry = Number.parseInt(response.headers.get("Retry-After") || "", 10);
  return new ApiError(error.message || response.statusText || `HTTP ${response.status}`, {
    status: response.status,
    type: error.type || "",
    code: error.code || "",
    retryAfter: Number.isFinite(retry) ? retry : null,
  });
}

export class ApiClient {
  /** @param {() => string} getKey returns the current API key ("" when none) */
  constructor(getKey) {
    this.getKey = getKey;
  }

  headers(extra = {}) {
    const key = this.getKey();
    return key ? { Authorization: `Bearer ${key}`, ...extra } : extra;
  }

  async request(path, init = {}) {
    let response;
    try {
      response = await fetch(path, { ...init, headers: this.headers(init.headers) });
    } catch (err) {
      if (err.name === "AbortError") throw err;
      throw new ApiError(err.message, { status: 0 });
    }
    if (!response.ok) throw await errorFrom(response);
    return response;
  }

  async getJSON(path) {
    return (await this.request(path)).json();
  }

  /** `{auth_required, version}`; asked without a key. */
  async config() {
    const response = await fetch("/ui/config.json");
    if (!response.ok) throw await errorFrom(response);
    return response.json();
  }

  /** The base models (aliases such as "name:long" are left out: the mode control covers them). */
  async models() {
    const body = await this.getJSON("/v1/models");
    return body.data.filter((m) => !(m.thinkgate && m.thinkgate.alias_of));
  }

  balance() {
    return this.getJSON("/v1/balance");
  }

  /** Usage rows grouped by day and mode, between two ISO dates (inclusive). */
  async usage(start, end) {
    const query = new URLSearchParams({ group_by: "day,mode", start, end });
    return (await this.getJSON(`/v1/usage?${query}`)).data;
  }

  /**
   * Streams one chat completion. Yields events:
   *   {type: "meta", mode, reason}      mode the gateway chose (first chunk that names it)
   *   {type: "reasoning", text}         a piece of reasoning
   *   {type: "content", text}           a piece of the answer
   *   {type: "tool_call", index, id, name, arguments}  a piece of a tool call: the first piece of
   *                                     each call has its id and name, every piece a part of its
   *                                     arguments (a JSON text)
   *   {type: "finish", reason}          finish_reason of the choice
   *   {type: "usage", usage}            the final usage object
   * and throws ApiError for an error response or a mid-stream error event.
   * @param {object} body the request body (stream options are added here)
   * @param {AbortSignal} signal aborts the request (Stop)
   */
  async *chat(body, signal) {
    const response = await this.request("/v1/chat/completions", {
      method: "POST",
      headers: { "Content-Type": "application/json", Accept: "text/event-stream" },
      body: JSON.stringify({ ...body, stream: true, stream_options: { include_usage: true } }),
      signal,
    });
    const splitter = new ThinkTagSplitter();
    let announcedMode = false;
    for await (const data of readEvents(response.body)) {
      if (data === "[DONE]") break;
      let chunk;
      try {
        chunk = JSON.parse(data);
      } catch {
        continue; // a stray non-JSON line; the OpenAI format has none
      }
      if (chunk.error) {
        const e = chunk.error;
        throw new ApiError(e.message || "the stream failed", {
          status: Number(e.code) >= 400 ? Number(e.code) : 503,
          type: e.type || "",
          code: typeof e.code === "string" ? e.code : "",
        });
      }
      if (!announcedMode && chunk.reasoning_mode) {
        announcedMode = true;
        yield { type: "meta", mode: chunk.reasoning_mode, reason: chunk.reasoning_mode_reason || "" };
      }
      const choice = (chunk.choices || [])[0];
      if (choice) {
        const delta = choice.delta || {};
        // The gateway sends the same text in both fields; never show it twice.
        const reasoning = delta.reasoning_content ?? delta.reasoning;
        if (reasoning) yield { type: "reasoning", text: reasoning };
        if (delta.content) {
          const split = splitter.push(delta.content);
          if (split.reasoning) yield { type: "reasoning", text: split.reasoning };
          if (split.content) yield { type: "content", text: split.content };
        }
        for (const call of delta.tool_calls || []) {
          const fn = call.function || {};
          yield { type: "tool_call", index: call.index ?? 0, id: call.id, name: fn.name, arguments: fn.arguments || "" };
        }
        if (choice.finish_reason) yield { type: "finish", reason: choice.finish_reason };
      }
      if (chunk.usage) yield { type: "usage", usage: chunk.usage };
    }
    const rest = splitter.flush();
    if (rest.reasoning) yield { type: "reasoning", text: rest.reasoning };
    if (rest.content) yield { type: "content", text: rest.content };
  }
}
