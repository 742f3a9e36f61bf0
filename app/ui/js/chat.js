// One answer being streamed: builds the request from a conversation, reads the stream into the
// assistant message, and measures it (time to first token, thinking time, tokens per second).

import { ApiError } from "./api.js";

/**
 * The OpenAI `messages` for everything before the answer being generated. Failed or empty answers
 * are left out; past reasoning goes back only when the user asked for it.
 */
export function requestMessages(messages, { sendReasoning = false } = {}) {
  const out = [];
  for (const m of messages) {
    if (m.role === "user") {
      if (m.images && m.images.length) {
        const parts = m.text ? [{ type: "text", text: m.text }] : [];
        for (const url of m.images) parts.push({ type: "image_url", image_url: { url } });
        out.push({ role: "user", content: parts });
      } else {
        out.push({ role: "user", content: m.text });
      }
    } else if (m.role === "assistant" && m.content && m.status !== "error") {
      const message = { role: "assistant", content: m.content };
      if (sendReasoning && m.reasoning) message.reasoning_content = m.reasoning;
      out.push(message);
    }
  }
  return out;
}

/** The request body for a conversation's settings. */
export function requestBody(conversation, history, { sendReasoning }) {
  const body = {
    model: conversation.model,
    messages: requestMessages(history, { sendReasoning }),
    reasoning_mode: conversation.mode || "auto",
  };
  if (conversation.mode === "long" && conversation.budget) body.reasoning = { max_tokens: conversation.budget };
  return body;
}

/**
 * Streams one answer into `message` (an assistant message, already in the conversation).
 * `onUpdate` is called after each change; it should be cheap (the caller batches rendering).
 * Resolves when the answer is finished, stopped or failed; never throws.
 * @param {import("./api.js").ApiClient} api
 * @param {object} body request body from requestBody()
 * @param {object} message the assistant message to fill
 * @param {AbortSignal} signal
 * @param {() => void} onUpdate
 */
export async function streamAnswer(api, body, message, signal, onUpdate) {
  const startedAt = Date.now();
  let firstTokenAt = null;
  let usage = null;
  Object.assign(message, {
    status: "streaming",
    startedAt,
    content: "",
    reasoning: "",
    error: null,
    stats: null,
    thinkMs: 0,
    model: body.model,
    requestedMode: body.reasoning_mode,
  });
  onUpdate();
  const firstToken = () => {
    if (firstTokenAt === null) firstTokenAt = Date.now();
  };
  try {
    for await (const event of api.chat(body, signal)) {
      switch (event.type) {
        case "meta":
          message.mode = event.mode;
          message.modeReason = event.reason;
          break;
        case "reasoning":
          firstToken();
          message.reasoning += event.text;
          break;
        case "content":
          firstToken();
          if (!message.content && message.reasoning) message.thinkMs = Date.now() - startedAt;
          message.content += event.text;
          break;
        case "finish":
          message.finishReason = event.reason;
          break;
        case "usage":
          usage = event.usage;
          break;
      }
      onUpdate();
    }
    message.status = "done";
  } catch (err) {
    if (err.name === "AbortError") {
      message.status = "stopped";
    } else {
      const apiError = err instanceof ApiError ? err : new ApiError(err.message);
      message.status = "error";
      message.error = {
        message: apiError.plainWords,
        status: apiError.status,
        code: apiError.code,
        retryAfter: apiError.retryAfter,
      };
    }
  }
  const endedAt = Date.now();
  if (message.reasoning && !message.thinkMs) message.thinkMs = endedAt - startedAt;
  message.stats = measure(usage, startedAt, firstTokenAt, endedAt);
  onUpdate();
}

function measure(usage, startedAt, firstTokenAt, endedAt) {
  const stats = { ttftMs: firstTokenAt === null ? null : firstTokenAt - startedAt };
  if (usage) {
    const reasoning = usage.completion_tokens_details?.reasoning_tokens ?? 0;
    Object.assign(stats, {
      promptTokens: usage.prompt_tokens ?? 0,
      reasoningTokens: reasoning,
      answerTokens: Math.max(0, (usage.completion_tokens ?? 0) - reasoning),
      cost: usage.cost ?? null,
    });
    // Over the whole generation, from the request to the end of the answer: the tokens of a busy
    // engine, or all of a short answer, may arrive in one burst, whose own span says nothing.
    const seconds = firstTokenAt === null ? 0 : (endedAt - startedAt) / 1000;
    if (seconds > 0 && usage.completion_tokens) stats.tokensPerSecond = usage.completion_tokens / seconds;
  }
  return stats;
}
