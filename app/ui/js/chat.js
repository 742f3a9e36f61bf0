// One answer being streamed: builds each request from a conversation, reads the stream into the
// assistant message, and measures it (time to first token, thinking time, tokens per second).
// With tools on offer the answer may take rounds (think → call → result → think → answer): when a
// round ends in tool calls, the page runs them (tools.js), keeps the round, and asks again.

import { ApiError } from "./api.js";
import { offeredTools, runToolCall } from "./tools.js";

/** How many times one answer may run tools before the page stops asking again. */
export const MAX_TOOL_ROUNDS = 5;

/**
 * The OpenAI `messages` for everything before the answer being generated (or the rounds it has
 * finished). Failed answers are left out; past reasoning goes back only when the user asked for
 * it, except in the current tool loop (the rounds after the last question), where it goes back
 * with its calls and the gateway keeps or drops it as the model's profile says.
 */
export function requestMessages(messages, { sendReasoning = false } = {}) {
  const out = [];
  const lastQuestion = messages.findLastIndex((m) => m.role === "user");
  messages.forEach((m, index) => {
    if (m.role === "user") {
      out.push(userMessage(m));
    } else if (m.role === "assistant" && m.status !== "error") {
      for (const round of m.rounds || []) out.push(...roundMessages(round, sendReasoning || index > lastQuestion));
      if (m.content) out.push(assistantMessage(m.content, sendReasoning && m.reasoning));
    }
  });
  return out;
}

function userMessage(m) {
  if (!m.images || !m.images.length) return { role: "user", content: m.text };
  const parts = m.text ? [{ type: "text", text: m.text }] : [];
  for (const url of m.images) parts.push({ type: "image_url", image_url: { url } });
  return { role: "user", content: parts };
}

function assistantMessage(content, reasoning) {
  const message = { role: "assistant", content };
  if (reasoning) message.reasoning_content = reasoning;
  return message;
}

/** A finished round: the assistant's calls (and what it said and thought), then each result. */
function roundMessages(round, withReasoning) {
  const calls = round.toolCalls.map((c) => ({
    id: c.id,
    type: "function",
    function: { name: c.name, arguments: c.arguments },
  }));
  // Whitespace between the reasoning and the calls is not part of what the model said.
  const said = round.content?.trim() ? round.content : null;
  const message = { ...assistantMessage(said, withReasoning && round.reasoning), tool_calls: calls };
  return [message, ...round.toolCalls.map((c) => ({ role: "tool", tool_call_id: c.id, content: c.result }))];
}

/**
 * The request body for a conversation's settings. `mode` overrides the conversation's: an answer
 * continued after a tool round keeps the mode its first round ran in.
 */
export function requestBody(conversation, messages, { sendReasoning, mode = conversation.mode || "auto" }) {
  const body = {
    model: conversation.model,
    messages: requestMessages(messages, { sendReasoning }),
    reasoning_mode: mode,
  };
  if (conversation.mode === "long" && conversation.budget) body.reasoning = { max_tokens: conversation.budget };
  const tools = offeredTools(conversation);
  if (tools.length) body.tools = tools;
  return body;
}

/**
 * Streams one answer into `message` (an assistant message, already in the conversation after
 * `history`), running the page's tools between rounds. `onUpdate` is called after each change; it
 * should be cheap (the caller batches rendering). Resolves when the answer is finished, stopped or
 * failed; never throws.
 * @param {import("./api.js").ApiClient} api
 * @param {{signal: AbortSignal, onUpdate: () => void, sendReasoning: boolean}} options
 */
export async function streamAnswer(api, conversation, history, message, { signal, onUpdate, sendReasoning }) {
  const run = { startedAt: Date.now(), firstTokenAt: null, generationMs: 0, usage: [] };
  Object.assign(message, {
    status: "streaming",
    startedAt: run.startedAt,
    content: "",
    reasoning: "",
    rounds: [],
    toolCalls: [],
    toolLimit: false,
    error: null,
    stats: null,
    thinkMs: 0,
    model: conversation.model,
    requestedMode: conversation.mode || "auto",
  });
  onUpdate();
  try {
    for (;;) {
      const mode = message.rounds.length && message.mode ? message.mode : message.requestedMode;
      const body = requestBody(conversation, [...history, message], { sendReasoning, mode });
      await streamRound(api, body, message, run, signal, onUpdate);
      if (message.finishReason !== "tool_calls" || !message.toolCalls.length) break;
      if (message.rounds.length >= MAX_TOOL_ROUNDS) {
        message.toolLimit = true;
        break;
      }
      closeRound(message);
      onUpdate();
    }
    message.status = "done";
  } catch (err) {
    failed(message, err);
  }
  message.stats = measure(run);
  onUpdate();
}

/** One request of an answer: its stream read into the message's live round. Throws on failure. */
async function streamRound(api, body, message, run, signal, onUpdate) {
  const startedAt = Date.now();
  message.roundStartedAt = startedAt;
  message.finishReason = null;
  let usage = null;
  const token = () => {
    run.firstTokenAt ??= Date.now();
  };
  const endThinking = () => {
    if (!message.thinkMs && message.reasoning) message.thinkMs = Date.now() - startedAt;
  };
  try {
    for await (const event of api.chat(body, signal)) {
      switch (event.type) {
        case "meta":
          if (!message.rounds.length) Object.assign(message, { mode: event.mode, modeReason: event.reason });
          break;
        case "reasoning":
          token();
          message.reasoning += event.text;
          break;
        case "content":
          token();
          if (!message.content) endThinking();
          message.content += event.text;
          break;
        case "tool_call":
          token();
          endThinking();
          addCallPiece(message.toolCalls, event);
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
  } finally {
    endThinking();
    run.generationMs += Date.now() - startedAt;
    run.usage.push(usage);
    message.reasoningTokens = usage?.completion_tokens_details?.reasoning_tokens ?? 0;
  }
}

/** A streamed piece of a tool call: the first names it (id, name), the rest add to its arguments. */
function addCallPiece(calls, piece) {
  const call = (calls[piece.index] ??= { id: "", name: "", arguments: "" });
  if (piece.id) call.id = piece.id;
  if (piece.name) call.name = piece.name;
  call.arguments += piece.arguments;
}

/** Runs the live round's calls and keeps the round; the next round starts empty. */
function closeRound(message) {
  const calls = message.toolCalls.filter(Boolean).map((call, i) => {
    const id = call.id || `call_${message.rounds.length}_${i}`;
    return { ...call, id, result: runToolCall(call) };
  });
  message.rounds.push({
    reasoning: message.reasoning,
    content: message.content,
    thinkMs: message.thinkMs,
    reasoningTokens: message.reasoningTokens,
    toolCalls: calls,
  });
  Object.assign(message, { reasoning: "", content: "", thinkMs: 0, reasoningTokens: 0, toolCalls: [] });
}

function failed(message, err) {
  if (err.name === "AbortError") {
    message.status = "stopped";
    return;
  }
  const apiError = err instanceof ApiError ? err : new ApiError(err.message);
  message.status = "error";
  message.error = {
    message: apiError.plainWords,
    status: apiError.status,
    code: apiError.code,
    retryAfter: apiError.retryAfter,
  };
}

/** The answer's numbers, summed over its rounds (shown only when every round reported its usage). */
function measure(run) {
  const stats = { ttftMs: run.firstTokenAt === null ? null : run.firstTokenAt - run.startedAt };
  if (!run.usage.length || run.usage.includes(null)) return stats;
  const sum = (read) => run.usage.reduce((total, usage) => total + (read(usage) ?? 0), 0);
  const reasoning = sum((u) => u.completion_tokens_details?.reasoning_tokens);
  const completion = sum((u) => u.completion_tokens);
  const costs = run.usage.map((u) => u.cost).filter((c) => c !== undefined && c !== null);
  Object.assign(stats, {
    promptTokens: sum((u) => u.prompt_tokens),
    reasoningTokens: reasoning,
    answerTokens: Math.max(0, completion - reasoning),
    cost: costs.length ? costs.reduce((a, b) => a + b, 0) : null,
  });
  // Over the whole generation, from each request to the end of its stream: the tokens of a busy
  // engine, or all of a short answer, may arrive in one burst, whose own span says nothing.
  const seconds = run.firstTokenAt === null ? 0 : run.generationMs / 1000;
  if (seconds > 0 && completion) stats.tokensPerSecond = completion / seconds;
  return stats;
}
