// Entry point: signs in, loads models and conversations, and connects the views to the chat
// logic. State lives here; views only show it and report what the user did.

import { ApiClient } from "./api.js";
import { streamAnswer } from "./chat.js";
import { h, toast } from "./dom.js";
import { settings, applyTheme } from "./settings.js";
import { ConversationStore, newId } from "./store.js";
import { wireTransfer } from "./transfer.js";
import { Composer } from "./views/composer.js";
import { Sidebar } from "./views/sidebar.js";
import { SignIn } from "./views/signin.js";
import { Transcript } from "./views/transcript.js";
import { UsageView } from "./views/usage.js";

const THEMES = ["system", "light", "dark"];

class App {
  constructor() {
    this.api = new ApiClient(() => this.apiKey);
    this.apiKey = "";
    this.authRequired = true;
    this.models = [];
    this.conversations = [];
    /** The open conversation (null: a new chat not yet saved). */
    this.current = null;
    /** The answer being streamed, if any: {conversation, message, controller}. */
    this.active = null;
    this.renderQueued = false;
  }

  async start() {
    applyTheme(settings.theme);
    let config = { auth_required: true, version: "" };
    try {
      config = await this.api.config();
    } catch {
      // An older gateway without /ui/config.json: ask for a key, which always works.
    }
    this.authRequired = config.auth_required !== false;
    document.getElementById("version-line").textContent = config.version ? `Thinkgate ${config.version}` : "";
    await this.signIn();
    this.store = await ConversationStore.open();
    this.buildViews();
    await this.refreshList();
    const last = this.conversations[0];
    if (last) await this.open(last.id);
    else this.newChat();
    document.getElementById("shell").hidden = false;
    this.route();
    this.composer.focus();
  }

  /** Resolves once requests can be made: with a stored key, a typed key, or no key at all. */
  async signIn() {
    if (!this.authRequired) {
      this.models = await this.api.models();
      return;
    }
    const check = async (key) => {
      const previous = this.apiKey;
      this.apiKey = key;
      try {
        this.models = await this.api.models();
      } catch (err) {
        this.apiKey = previous;
        throw err;
      }
    };
    let message = "";
    if (settings.apiKey) {
      try {
        await check(settings.apiKey);
        return;
      } catch (err) {
        message = err.status === 401 ? "Your saved API key is no longer accepted. Sign in again." : err.plainWords;
      }
    }
    settings.apiKey = await new SignIn().ask(check, message);
  }

  buildViews() {
    this.transcript = new Transcript(
      document.getElementById("transcript"),
      document.getElementById("messages"),
      (action, id, extra) => this.onMessageAction(action, id, extra),
    );
    this.composer = new Composer({
      onSend: (draft) => this.send(draft),
      onStop: () => this.stop(),
      onOptionsChange: (options) => this.setOptions(options),
    });
    this.sidebar = new Sidebar({ onOpen: (id) => this.open(id), onDelete: (id) => this.deleteConversation(id) });
    this.usage = new UsageView(this.api);

    const select = document.getElementById("model-select");
    select.replaceChildren(...this.models.map((m) => h("option", { value: m.id, text: m.id })));
    select.addEventListener("change", () => this.setModel(select.value));
    if (!this.models.length) select.append(h("option", { value: "", text: "No models" }));

    document.getElementById("new-chat").addEventListener("click", () => this.newChat());
    wireTransfer(this.store, async (message) => {
      await this.refreshList();
      toast(message);
    });
    const signOut = document.getElementById("sign-out");
    signOut.hidden = !this.authRequired;
    signOut.addEventListener("click", () => {
      settings.apiKey = null;
      location.reload();
    });
    document.getElementById("theme-toggle").addEventListener("click", () => {
      this.setTheme(THEMES[(THEMES.indexOf(settings.theme) + 1) % THEMES.length]);
    });
    this.wireSettings();
    window.addEventListener("hashchange", () => this.route());
    document.addEventListener("keydown", (event) => this.onKey(event));
    setInterval(() => this.active && this.transcript.tick(), 200);
    // An answer cut by a reload or a closed tab cannot resume: keep what arrived.
    window.addEventListener("pagehide", () => this.active && this.stop());
  }

  wireSettings() {
    const dialog = document.getElementById("settings");
    const sendReasoning = document.getElementById("send-reasoning");
    document.getElementById("open-settings").addEventListener("click", () => this.openSettings());
    dialog.addEventListener("change", (event) => {
      if (event.target.name === "theme") this.setTheme(event.target.value);
      if (event.target === sendReasoning) settings.sendReasoning = sendReasoning.checked;
    });
  }

  openSettings() {
    const dialog = document.getElementById("settings");
    for (const radio of dialog.querySelectorAll('input[name="theme"]')) radio.checked = radio.value === settings.theme;
    document.getElementById("send-reasoning").checked = settings.sendReasoning;
    if (!dialog.open) dialog.showModal();
  }

  setTheme(theme) {
    settings.theme = theme;
    applyTheme(theme);
  }

  onKey(event) {
    const mod = event.ctrlKey || event.metaKey;
    if (event.key === "Escape" && this.active) {
      event.preventDefault();
      this.stop();
    } else if (event.key === "Escape") {
      this.sidebar.setOpen(false);
    } else if (mod && event.shiftKey && event.code === "KeyO") {
      event.preventDefault();
      this.newChat();
    } else if (mod && event.key === "/") {
      event.preventDefault();
      this.openSettings();
    }
  }

  route() {
    const usage = location.hash === "#/usage";
    document.getElementById("chat-view").hidden = usage;
    document.getElementById("usage-view").hidden = !usage;
    document.getElementById("usage-link").toggleAttribute("aria-current", usage);
    if (usage) {
      document.getElementById("usage-link").setAttribute("aria-current", "page");
      this.sidebar.setOpen(false);
      this.usage.load();
    }
  }

  showChat() {
    if (location.hash === "#/usage") location.hash = "#/";
  }

  // ---- Conversations --------------------------------------------------------------------------

  modelById(id) {
    return this.models.find((m) => m.id === id) || null;
  }

  defaultModel() {
    return (this.modelById(settings.model) || this.models[0] || { id: "" }).id;
  }

  async refreshList() {
    this.conversations = await this.store.list();
    this.sidebar.render(this.conversations, this.current?.id ?? null);
  }

  newChat() {
    this.showChat();
    this.current = null;
    this.showConversation({ model: this.defaultModel(), ...settings.draftMode, messages: [] });
    this.sidebar.render(this.conversations, null);
    this.composer.focus();
  }

  async open(id) {
    this.showChat();
    // The conversation being streamed is the live object, not its last saved copy.
    const conversation = this.active?.conversation.id === id ? this.active.conversation : await this.store.get(id);
    if (!conversation) return;
    for (const m of conversation.messages) {
      if (m.status === "streaming" && this.active?.message !== m) m.status = "stopped";
    }
    this.current = conversation;
    this.showConversation(conversation);
    this.sidebar.render(this.conversations, id);
  }

  /** Puts a conversation (or a new chat's settings) on screen. */
  showConversation(c) {
    const select = document.getElementById("model-select");
    const model = this.modelById(c.model) ? c.model : this.defaultModel();
    select.value = model;
    this.composer.setModel(this.modelById(model));
    this.composer.setOptions({ mode: c.mode || "auto", budget: c.budget || null, calculator: c.calculator });
    document.getElementById("chat-title").textContent = c.title || "";
    document.getElementById("welcome").hidden = c.messages.length > 0;
    this.transcript.show(c.messages, { busy: Boolean(this.active), scrollToEnd: true });
  }

  async save(conversation) {
    conversation.updatedAt = Date.now();
    await this.store.put(conversation);
    await this.refreshList();
  }

  async deleteConversation(id) {
    if (this.active?.conversation.id === id) {
      this.active.conversation.deleted = true; // so the stopped stream does not save it back
      this.stop();
    }
    await this.store.delete(id);
    if (this.current?.id === id) this.current = null;
    await this.refreshList();
    if (!this.current) this.newChat();
  }

  setModel(id) {
    settings.model = id;
    this.composer.setModel(this.modelById(id));
    if (this.current) {
      this.current.model = id;
      this.save(this.current);
    }
  }

  /** The composer's mode, budget and calculator switch: the open chat's, or the next new chat's. */
  setOptions(options) {
    if (this.current) {
      Object.assign(this.current, options);
      this.save(this.current);
    } else {
      settings.draftMode = options;
    }
  }

  // ---- Sending and streaming ------------------------------------------------------------------

  /** @returns {boolean} false when the draft was not sent (it stays in the box) */
  send({ text, images }) {
    if (this.active || !this.models.length) return false;
    if (!this.current) {
      const now = Date.now();
      this.current = {
        id: newId(),
        title: titleFor(text),
        model: document.getElementById("model-select").value,
        ...this.composer.options,
        messages: [],
        createdAt: now,
        updatedAt: now,
      };
    }
    this.current.messages.push({ id: newId(), role: "user", text, images, createdAt: Date.now() });
    this.generate(this.current);
    return true;
  }

  /** Appends a new answer to `conversation` and streams it. */
  async generate(conversation) {
    conversation.model = document.getElementById("model-select").value || conversation.model;
    Object.assign(conversation, this.composer.options);
    const history = [...conversation.messages];
    const message = { id: newId(), role: "assistant", content: "", reasoning: "", createdAt: Date.now() };
    conversation.messages.push(message);
    const controller = new AbortController();
    this.active = { conversation, message, controller };
    this.composer.setBusy(true);
    document.getElementById("welcome").hidden = true;
    if (this.current === conversation) this.transcript.show(conversation.messages, { busy: true, scrollToEnd: true });
    await this.save(conversation);
    this.sidebar.render(this.conversations, this.current?.id ?? null);

    await streamAnswer(this.api, conversation, history, message, {
      signal: controller.signal,
      sendReasoning: settings.sendReasoning,
      onUpdate: () => this.queueRender(conversation, message),
    });

    this.active = null;
    if (!conversation.deleted) await this.save(conversation);
    if (this.current === conversation) this.transcript.show(conversation.messages, { busy: false });
    // Send comes back only once the finished answer is saved and on screen: the last streamed render
    // waits for an animation frame, and a reload must find the whole answer.
    this.composer.setBusy(false);
  }

  /** Renders a streaming message at most once per animation frame. */
  queueRender(conversation, message) {
    if (this.renderQueued) return;
    this.renderQueued = true;
    requestAnimationFrame(() => {
      this.renderQueued = false;
      if (this.current === conversation) this.transcript.update(message);
    });
  }

  stop() {
    this.active?.controller.abort();
  }

  async onMessageAction(action, id, extra) {
    const conversation = this.current;
    if (!conversation) return;
    const index = conversation.messages.findIndex((m) => m.id === id);
    const message = conversation.messages[index];
    if (!message) return;
    switch (action) {
      case "delete":
        if (this.active) return;
        conversation.messages.splice(index, 1);
        // Saved before it leaves the screen: a reload right after must not bring it back.
        await this.save(conversation);
        this.transcript.show(conversation.messages);
        break;
      case "regenerate":
        if (this.active) return;
        conversation.messages.splice(index); // this answer and everything after it
        this.generate(conversation);
        break;
      case "edit":
        if (this.active) return;
        message.text = extra;
        conversation.messages.splice(index + 1);
        if (index === 0) conversation.title = titleFor(extra);
        this.generate(conversation);
        break;
    }
  }
}

function titleFor(text) {
  const line = (text || "").split("\n").find((l) => l.trim()) || "Image";
  return line.length > 60 ? `${line.slice(0, 57)}…` : line;
}

new App().start().catch((err) => {
  document.body.replaceChildren(
    h("p", { class: "fatal", role: "alert", text: `Thinkgate could not start: ${err.plainWords || err.message}` }),
  );
});
