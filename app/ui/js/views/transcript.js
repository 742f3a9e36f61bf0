// The message list of the open conversation. One MessageView per message keeps its DOM between
// updates, so a streaming answer is patched in place (at most once per animation frame) and a
// reasoning panel that the user opened or closed stays that way.

import { h, formatSeconds, formatCost, copyToClipboard, flashLabel } from "../dom.js";
import { renderMarkdown } from "../render.js";
import { RoundsView, callItems, thoughtLabel } from "./rounds.js";

/** The user's own open/closed choice per reasoning panel, by message id: it always wins. */
const userPanelChoice = new Map();

const MODE_NAMES = { long: "Long", short: "Short", auto: "Auto" };

export class Transcript {
  /**
   * @param {HTMLElement} scroller the scrolling container
   * @param {HTMLOListElement} list where messages go
   * @param {(action: string, messageId: string, extra?: any) => void} onAction
   */
  constructor(scroller, list, onAction) {
    this.scroller = scroller;
    this.list = list;
    this.onAction = onAction;
    this.views = new Map();
    this.busy = false;
    this.followTail = true;
    // Code blocks are re-rendered while they stream: one listener here serves all their buttons.
    list.addEventListener("click", async (event) => {
      const button = event.target.closest(".copy-code");
      if (!button) return;
      await copyToClipboard(button.closest(".code-block").querySelector("code").textContent);
      flashLabel(button, "Copied");
    });
    scroller.addEventListener("scroll", () => {
      const gap = scroller.scrollHeight - scroller.scrollTop - scroller.clientHeight;
      this.followTail = gap < 60;
    });
  }

  /** Shows `messages`, reusing the views of messages already shown. */
  show(messages, { busy = false, scrollToEnd = false } = {}) {
    this.busy = busy;
    const keep = new Set(messages.map((m) => m.id));
    for (const [id, view] of this.views) {
      if (!keep.has(id)) {
        view.destroy();
        this.views.delete(id);
      }
    }
    let previous = null;
    for (const message of messages) {
      let view = this.views.get(message.id);
      if (!view) {
        view = new MessageView(message, this.onAction);
        this.views.set(message.id, view);
      }
      view.update(message, busy);
      const expected = previous ? previous.nextSibling : this.list.firstChild;
      if (expected !== view.root) this.list.insertBefore(view.root, expected);
      previous = view.root;
    }
    if (scrollToEnd) this.followTail = true;
    this.stickToEnd();
  }

  /** Re-renders one message (streaming updates). */
  update(message) {
    this.views.get(message.id)?.update(message, this.busy);
    this.stickToEnd();
  }

  stickToEnd() {
    if (this.followTail) this.scroller.scrollTop = this.scroller.scrollHeight;
  }

  /** Ticks the live "Thinking… N s" timers. */
  tick() {
    for (const view of this.views.values()) view.tick();
  }
}

class MessageView {
  constructor(message, onAction) {
    this.id = message.id;
    this.role = message.role;
    this.onAction = onAction;
    this.editing = false;
    this.rendered = { content: null, reasoning: null };
    this.root = h("li", { class: `message ${message.role}`, dataset: { id: message.id } });
    if (message.role === "user") this.buildUser();
    else this.buildAssistant();
  }

  act(action, extra) {
    return () => this.onAction(action, this.id, extra);
  }

  /** A click handler that copies part of the message and says so on the button. */
  copier(part) {
    return async (event) => {
      const button = event.currentTarget;
      await copyToClipboard(this.message[part] || "");
      flashLabel(button, "Copied");
    };
  }

  buildUser() {
    this.images = h("div", { class: "images" });
    this.bubble = h("div", { class: "bubble" });
    this.actions = h(
      "div",
      { class: "actions" },
      h("button", { type: "button", text: "Edit", on: { click: () => this.startEdit() } }),
      h("button", { type: "button", text: "Copy", on: { click: this.copier("text") } }),
      h("button", { type: "button", text: "Delete", on: { click: this.act("delete") } }),
    );
    this.root.append(this.images, this.bubble, this.actions);
  }

  buildAssistant() {
    this.head = h("div", { class: "message-head" });
    this.summaryLabel = h("span", { class: "summary-label" });
    this.reasoningBody = h("div", { class: "reasoning-body markdown" });
    this.panel = h(
      "details",
      { class: "reasoning", hidden: true },
      h("summary", {}, this.summaryLabel),
      this.reasoningBody,
      h(
        "div",
        { class: "reasoning-tools" },
        h("button", { type: "button", class: "small", text: "Copy reasoning", on: { click: this.copier("reasoning") } }),
      ),
    );
    // A click on the summary is the user's choice; record what the panel is about to become.
    this.panel.querySelector("summary").addEventListener("click", () => {
      userPanelChoice.set(this.id, !this.panel.open);
    });
    this.rounds = new RoundsView();
    this.answer = h("div", { class: "answer markdown" });
    this.calls = h("ul", { class: "tool-calls", "aria-label": "Tool calls", hidden: true });
    this.stopped = h("p", { class: "stopped-note", text: "Stopped.", hidden: true });
    this.toolLimit = h("p", { class: "tool-limit-note", hidden: true });
    this.errorText = h("p", {});
    this.error = h(
      "div",
      { class: "message-error", role: "alert", hidden: true },
      this.errorText,
      h("button", { type: "button", class: "small", text: "Retry", on: { click: this.act("regenerate") } }),
    );
    this.stats = h("div", { class: "stats", hidden: true });
    this.regenerate = h("button", { type: "button", text: "Regenerate", on: { click: this.act("regenerate") } });
    this.actions = h(
      "div",
      { class: "actions" },
      h("button", { type: "button", text: "Copy", on: { click: this.copier("content") } }),
      this.regenerate,
      h("button", { type: "button", text: "Delete", on: { click: this.act("delete") } }),
    );
    this.root.append(
      this.head,
      this.rounds.root,
      this.panel,
      this.answer,
      this.calls,
      this.stopped,
      this.toolLimit,
      this.error,
      this.stats,
      this.actions,
    );
  }

  destroy() {
    this.root.remove();
  }

  update(message, busy) {
    this.message = message;
    if (message.role === "user") this.updateUser(message, busy);
    else this.updateAssistant(message, busy);
  }

  updateUser(message, busy) {
    if (this.editing) return;
    this.bubble.textContent = message.text;
    this.bubble.hidden = !message.text;
    this.images.replaceChildren(
      ...(message.images || []).map((url, i) => h("img", { src: url, alt: `Attached image ${i + 1}` })),
    );
    for (const b of this.actions.querySelectorAll("button")) b.disabled = busy;
  }

  startEdit() {
    if (this.editing) return;
    this.editing = true;
    const area = h("textarea", { value: this.message.text, "aria-label": "Edit message" });
    const finish = () => {
      this.editing = false;
      box.remove();
      this.bubble.hidden = !this.message.text;
      this.actions.hidden = false;
    };
    const box = h(
      "div",
      { class: "edit-box" },
      area,
      h(
        "div",
        {},
        h("button", { type: "button", text: "Cancel", on: { click: finish } }),
        h("button", {
          type: "button",
          class: "primary",
          text: "Save and send",
          on: {
            click: () => {
              const text = area.value.trim();
              finish();
              if (text) this.onAction("edit", this.id, text);
            },
          },
        }),
      ),
    );
    area.addEventListener("keydown", (event) => {
      if (event.key === "Escape") {
        event.stopPropagation();
        finish();
      }
    });
    this.bubble.hidden = true;
    this.actions.hidden = true;
    this.root.insertBefore(box, this.actions);
    area.focus();
  }

  updateAssistant(m, busy) {
    const streaming = m.status === "streaming";
    this.root.classList.toggle("streaming", streaming);

    // Head: model and, for Auto, the mode the router picked and why.
    const badges = [];
    if (m.mode) {
      const chosen = MODE_NAMES[m.mode] || m.mode;
      const label = m.requestedMode === "auto" ? `Auto → ${chosen}` : chosen;
      badges.push(h("span", { class: `mode-badge ${m.mode}`, title: "Reasoning mode", text: label }));
      if (m.requestedMode === "auto" && m.modeReason) {
        badges.push(h("span", { class: "mode-reason", text: m.modeReason.replace(/^auto:\s*/, "") }));
      }
    }
    this.head.replaceChildren(h("span", { class: "model-name", text: m.model || "" }), ...badges);

    // Tool rounds already finished; then the live round: its reasoning, answer and calls.
    this.rounds.update(m.rounds || []);
    const calling = Boolean(m.toolCalls && m.toolCalls.length);

    // Reasoning panel.
    const hasReasoning = Boolean(m.reasoning);
    this.panel.hidden = !hasReasoning;
    if (hasReasoning) {
      const thinking = streaming && !m.content && !calling;
      this.panel.classList.toggle("streaming", thinking);
      this.thinkingSince = thinking ? m.roundStartedAt || m.startedAt : null;
      this.summaryLabel.textContent = thinking
        ? thinkingLabel(this.thinkingSince)
        : thoughtLabel(m.thinkMs, m.reasoningTokens ?? m.stats?.reasoningTokens);
      // Open while thinking, closed once the answer starts; a stop before any answer leaves the
      // reasoning open, as it is all there is to read. The user's own choice beats both.
      const auto = thinking || (m.status === "stopped" && !m.content);
      const wanted = userPanelChoice.get(this.id) ?? auto;
      if (this.panel.open !== wanted) this.panel.open = wanted;
      if (this.rendered.reasoning !== m.reasoning) {
        const body = this.reasoningBody;
        const atEnd = body.scrollHeight - body.scrollTop - body.clientHeight < 40;
        renderMarkdown(body, m.reasoning, { lineBreaks: true });
        this.rendered.reasoning = m.reasoning;
        if (atEnd) body.scrollTop = body.scrollHeight; // follow the tail while it streams
      }
    }

    // Answer.
    if (this.rendered.content !== m.content) {
      renderMarkdown(this.answer, m.content || "");
      this.rendered.content = m.content;
    }
    this.answer.classList.toggle("empty", !m.content && !streaming);
    // The cursor marks where text is coming: the answer, or anything at all before reasoning.
    this.answer.classList.toggle("cursor", streaming && !calling && (Boolean(m.content) || !m.reasoning));
    this.calls.hidden = !calling;
    if (calling) this.calls.replaceChildren(...callItems(m.toolCalls, { streaming }));

    this.stopped.hidden = m.status !== "stopped";
    this.toolLimit.hidden = !m.toolLimit;
    if (m.toolLimit) {
      this.toolLimit.textContent = `Stopped: the model still called tools after ${m.rounds.length} rounds.`;
    }
    this.error.hidden = m.status !== "error";
    if (m.error) this.errorText.textContent = m.error.message;

    // A refused request has nothing to measure; its error says what happened.
    this.stats.hidden = streaming || !m.stats || (m.status === "error" && m.stats.promptTokens === undefined);
    if (m.stats && !streaming) this.stats.replaceChildren(...statsParts(m.stats));

    this.actions.hidden = streaming;
    for (const b of this.actions.querySelectorAll("button")) b.disabled = busy;
    for (const b of this.error.querySelectorAll("button")) b.disabled = busy;
  }

  tick() {
    if (this.thinkingSince) this.summaryLabel.textContent = thinkingLabel(this.thinkingSince);
  }
}

function thinkingLabel(since) {
  return `Thinking… ${formatSeconds(Date.now() - since)}`;
}

function statsParts(s) {
  const parts = [];
  const num = (n) => (n === null || n === undefined ? "–" : String(n));
  if (s.promptTokens !== undefined) {
    parts.push(
      h("span", { title: "Prompt tokens", text: `Prompt ${num(s.promptTokens)}` }),
      h("span", { title: "Reasoning tokens", text: `Reasoning ${num(s.reasoningTokens)}` }),
      h("span", { title: "Answer tokens", text: `Answer ${num(s.answerTokens)} tokens` }),
      h("span", { title: "Cost in US dollars", text: formatCost(s.cost) }),
    );
  } else {
    parts.push(h("span", { text: "No usage reported (the stream ended early)" }));
  }
  if (s.ttftMs !== undefined && s.ttftMs !== null) {
    parts.push(h("span", { title: "Time to first token", text: `TTFT ${formatSeconds(s.ttftMs)}` }));
  }
  if (s.tokensPerSecond) {
    parts.push(h("span", { title: "Generated tokens per second", text: `${s.tokensPerSecond.toFixed(1)} tok/s` }));
  }
  return parts;
}
