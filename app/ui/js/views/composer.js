// The message box and everything beside it: attachments (picker, drag-and-drop, paste), the
// reasoning mode control with its thinking budget, the calculator switch, and Send/Stop.

import { h } from "../dom.js";
import { prepareImage, isSendableImage } from "../images.js";

const MAX_IMAGES = 4;

export class Composer {
  /**
   * @param {{onSend: (draft: {text: string, images: string[]}) => boolean|void,
   *          onStop: () => void, onOptionsChange: (options: ComposerOptions) => void}} handlers
   *   onSend returns false when it refused the draft (the draft is then kept)
   * @typedef {{mode: string, budget: number|null, calculator: boolean}} ComposerOptions
   */
  constructor(handlers) {
    this.handlers = handlers;
    this.form = document.getElementById("composer");
    this.input = document.getElementById("message-input");
    this.sendButton = document.getElementById("send");
    this.stopButton = document.getElementById("stop");
    this.attachButton = document.getElementById("attach");
    this.fileInput = document.getElementById("file-input");
    this.attachmentList = document.getElementById("attachments");
    this.notice = document.getElementById("composer-notice");
    this.dropHint = document.getElementById("drop-hint");
    this.modeControl = document.getElementById("mode-control");
    this.budgetField = document.getElementById("budget-field");
    this.budgetInput = document.getElementById("thinking-budget");
    this.calculatorToggle = document.getElementById("calculator-toggle");
    /** @type {{url: string, name: string}[]} */
    this.images = [];
    this.vision = true;
    this.busy = false;
    this.wire();
  }

  wire() {
    this.form.addEventListener("submit", (event) => {
      event.preventDefault();
      this.send();
    });
    this.input.addEventListener("keydown", (event) => {
      // Enter sends; Shift+Enter (and Enter while an IME is composing) makes a new line.
      if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
        event.preventDefault();
        this.send();
      }
    });
    this.input.addEventListener("input", () => this.autosize());
    this.stopButton.addEventListener("click", () => this.handlers.onStop());
    this.attachButton.addEventListener("click", () => this.fileInput.click());
    this.fileInput.addEventListener("change", () => {
      this.addFiles([...this.fileInput.files]);
      this.fileInput.value = "";
    });
    this.input.addEventListener("paste", (event) => {
      const files = [...(event.clipboardData?.files || [])].filter(isSendableImage);
      if (files.length) {
        event.preventDefault();
        this.addFiles(files);
      }
    });
    // Drag-and-drop anywhere over the chat.
    const zone = document.getElementById("chat-view");
    let depth = 0;
    const hasFiles = (event) => [...(event.dataTransfer?.types || [])].includes("Files");
    zone.addEventListener("dragenter", (event) => {
      if (!hasFiles(event)) return;
      depth += 1;
      this.dropHint.hidden = false;
      this.form.classList.add("dragging");
    });
    zone.addEventListener("dragleave", () => {
      depth = Math.max(0, depth - 1);
      if (depth === 0) this.endDrag();
    });
    zone.addEventListener("dragover", (event) => {
      if (hasFiles(event)) event.preventDefault();
    });
    zone.addEventListener("drop", (event) => {
      if (!hasFiles(event)) return;
      event.preventDefault();
      depth = 0;
      this.endDrag();
      this.addFiles([...event.dataTransfer.files]);
    });
    this.modeControl.addEventListener("change", () => {
      this.showBudgetField();
      this.handlers.onOptionsChange(this.options);
    });
    this.budgetInput.addEventListener("change", () => this.handlers.onOptionsChange(this.options));
    this.calculatorToggle.addEventListener("change", () => this.handlers.onOptionsChange(this.options));
  }

  endDrag() {
    this.dropHint.hidden = true;
    this.form.classList.remove("dragging");
  }

  autosize() {
    this.input.style.height = "auto"; // CSSOM, allowed by the CSP
    this.input.style.height = `${Math.min(this.input.scrollHeight, window.innerHeight * 0.4)}px`;
  }

  async addFiles(files) {
    const problems = [];
    for (const file of files) {
      if (this.images.length >= MAX_IMAGES) {
        problems.push(`At most ${MAX_IMAGES} images per message.`);
        break;
      }
      try {
        const image = await prepareImage(file);
        this.images.push({ url: image.url, name: file.name || "pasted image" });
      } catch (err) {
        problems.push(err.message);
      }
    }
    this.renderAttachments();
    this.showNotice(problems.join(" "));
  }

  renderAttachments() {
    this.attachmentList.hidden = this.images.length === 0;
    this.attachmentList.replaceChildren(
      ...this.images.map((image, i) =>
        h(
          "li",
          {},
          h("img", { src: image.url, alt: `Image ${i + 1}: ${image.name}` }),
          h("button", {
            type: "button",
            "aria-label": `Remove image ${i + 1}`,
            text: "✕",
            on: {
              click: () => {
                this.images.splice(i, 1);
                this.renderAttachments();
                this.showNotice("");
              },
            },
          }),
        ),
      ),
    );
    this.showVisionNotice();
  }

  /** A model without vision: say so as soon as images are attached, not after a failed call. */
  showVisionNotice() {
    if (this.images.length && !this.vision) {
      this.showNotice(`${this.modelName} cannot read images. Remove them, or pick a model with vision.`);
      return true;
    }
    return false;
  }

  showNotice(text) {
    this.notice.textContent = text;
    this.notice.hidden = !text;
  }

  send() {
    if (this.busy) return;
    const text = this.input.value.trim();
    if (!text && !this.images.length) return;
    if (this.showVisionNotice()) return;
    const accepted = this.handlers.onSend({ text, images: this.images.map((i) => i.url) });
    if (accepted === false) return;
    this.input.value = "";
    this.images = [];
    this.renderAttachments();
    this.showNotice("");
    this.autosize();
  }

  /** Puts text back into the box (used by edit flows and failed sends). */
  setText(text) {
    this.input.value = text;
    this.autosize();
    this.input.focus();
  }

  setBusy(busy) {
    this.busy = busy;
    this.sendButton.hidden = busy;
    this.stopButton.hidden = !busy;
  }

  /** Adapts the controls to a model's capabilities (from /v1/models' `thinkgate` object). */
  setModel(model) {
    const caps = model?.thinkgate || {};
    this.modelName = model?.id || "This model";
    this.vision = caps.vision !== false && model !== null;
    const modes = caps.modes || (caps.reasoning ? ["auto", "long", "short"] : []);
    this.modeControl.hidden = modes.length < 2;
    for (const radio of this.modeControl.querySelectorAll("input")) {
      radio.closest("label").hidden = !modes.includes(radio.value);
    }
    if (caps.max_thinking_budget) this.budgetInput.max = String(caps.max_thinking_budget);
    else this.budgetInput.removeAttribute("max");
    this.showBudgetField();
    if (!this.showVisionNotice() && this.notice.textContent.includes("cannot read images")) this.showNotice("");
  }

  get mode() {
    return this.modeControl.querySelector("input:checked")?.value || "auto";
  }

  get budget() {
    const n = Number.parseInt(this.budgetInput.value, 10);
    if (!Number.isFinite(n) || n <= 0) return null;
    const max = Number.parseInt(this.budgetInput.max, 10);
    return Number.isFinite(max) ? Math.min(n, max) : n;
  }

  /** Whether the page offers the model its calculator (tools.js) with the next request. */
  get calculator() {
    return this.calculatorToggle.checked;
  }

  /** @returns {ComposerOptions} what the next request will ask for */
  get options() {
    return { mode: this.mode, budget: this.budget, calculator: this.calculator };
  }

  /** Shows a conversation's remembered mode, budget and calculator switch. */
  setOptions({ mode, budget, calculator }) {
    const radio = this.modeControl.querySelector(`input[value="${mode}"]`) || this.modeControl.querySelector("input");
    radio.checked = true;
    this.budgetInput.value = budget ? String(budget) : "";
    this.calculatorToggle.checked = Boolean(calculator);
    this.showBudgetField();
  }

  showBudgetField() {
    this.budgetField.hidden = this.modeControl.hidden || this.mode !== "long";
  }

  focus() {
    this.input.focus();
  }
}
