// The tool rounds of an answer (think → call → result → think → …): above the live part of the
// answer, each finished round's reasoning (a collapsed panel), anything it said, and its calls with
// their results, one line each: "calculator(4821*375) → 1807875". The live round's calls are shown
// the same way, by the transcript, while they stream.

import { h, formatSeconds } from "../dom.js";
import { renderMarkdown } from "../render.js";
import { callLabel } from "../tools.js";

export class RoundsView {
  constructor() {
    this.root = h("div", { class: "tool-rounds", hidden: true });
    this.shown = [];
  }

  /** Finished rounds never change: each is built once, so a panel the user opened stays open. */
  update(rounds) {
    if (this.shown.some((round, i) => rounds[i] !== round)) {
      this.root.replaceChildren();
      this.shown = [];
    }
    for (const round of rounds.slice(this.shown.length)) {
      this.root.append(roundElement(round));
      this.shown.push(round);
    }
    this.root.hidden = rounds.length === 0;
  }
}

function roundElement(round) {
  const parts = [];
  if (round.reasoning) {
    const body = h("div", { class: "reasoning-body markdown" });
    renderMarkdown(body, round.reasoning, { lineBreaks: true });
    const label = thoughtLabel(round.thinkMs, round.reasoningTokens);
    parts.push(h("details", { class: "round-reasoning" }, h("summary", {}, h("span", { text: label })), body));
  }
  if (round.content?.trim()) {
    const said = h("div", { class: "round-text markdown" });
    renderMarkdown(said, round.content);
    parts.push(said);
  }
  parts.push(h("ul", { class: "tool-calls", "aria-label": "Tool calls" }, callItems(round.toolCalls)));
  return h("div", { class: "tool-round" }, ...parts);
}

/**
 * One line per call: what was called, then its result ("…" while it streams, "not run" when the
 * answer stopped first).
 */
export function callItems(calls, { streaming = false } = {}) {
  return calls.filter(Boolean).map((call) => {
    const result = call.result ?? (streaming ? "…" : "not run");
    const failed = call.result === undefined ? !streaming : call.result.startsWith("error:");
    return h(
      "li",
      { class: failed ? "tool-call failed" : "tool-call" },
      h("code", { class: "tool-call-name", text: callLabel(call, { streaming }) }),
      h("span", { class: "tool-call-arrow", text: " → " }),
      h("output", { class: "tool-call-result", text: result }),
    );
  });
}

/** "Thought for 4.2 s · 180 tokens" (no count when the upstream did not give one). */
export function thoughtLabel(thinkMs, tokens) {
  const parts = [`Thought for ${formatSeconds(thinkMs || 0)}`];
  if (tokens) parts.push(`${tokens} tokens`);
  return parts.join(" · ");
}
