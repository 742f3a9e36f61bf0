// The tools the page offers the model and runs itself, in the browser (today: the calculator).
// A conversation with the calculator on offers it with every request; a call the model makes is
// answered here and sent back as a `tool` message (chat.js runs the loop).

import { CALCULATOR_TOOL, answerCall } from "./calculator.js";

/** name → (arguments JSON text) → the tool message's content */
const BUILT_IN = new Map([["calculator", answerCall]]);

/** The `tools` of a request for this conversation (none: the field is left out). */
export function offeredTools(conversation) {
  return conversation.calculator ? [CALCULATOR_TOOL] : [];
}

/** Runs one call ({name, arguments}); what it returns is what the model reads. */
export function runToolCall(call) {
  const run = BUILT_IN.get(call.name);
  return run ? run(call.arguments) : `error: there is no tool named "${call.name}"`;
}

/**
 * How a call reads in the transcript: `calculator(4821*375)`. The calculator shows its expression;
 * other calls, or arguments that are not a JSON object, show their arguments' text (while they
 * stream and do not parse yet: "…").
 */
export function callLabel(call, { streaming = false } = {}) {
  let shown = streaming ? "…" : call.arguments;
  try {
    const args = JSON.parse(call.arguments);
    shown = call.name === "calculator" && typeof args?.expression === "string" ? args.expression : call.arguments;
  } catch {
    // still streaming, or not JSON: as above
  }
  return `${call.name}(${shown})`;
}
