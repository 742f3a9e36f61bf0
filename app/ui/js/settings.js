// Preferences kept in localStorage (the API key included: the UI has no server-side session).

const PREFIX = "thinkgate.";

function read(name, fallback) {
  try {
    const value = localStorage.getItem(PREFIX + name);
    return value === null ? fallback : JSON.parse(value);
  } catch {
    return fallback;
  }
}

function write(name, value) {
  if (value === null || value === undefined) localStorage.removeItem(PREFIX + name);
  else localStorage.setItem(PREFIX + name, JSON.stringify(value));
}

export const settings = {
  get apiKey() {
    return read("apiKey", "");
  },
  set apiKey(value) {
    write("apiKey", value || null);
  },
  /** "system" | "light" | "dark" */
  get theme() {
    return read("theme", "system");
  },
  set theme(value) {
    write("theme", value);
  },
  /** Whether past reasoning is sent back to the model (off: what reasoning models expect). */
  get sendReasoning() {
    return read("sendReasoning", false);
  },
  set sendReasoning(value) {
    write("sendReasoning", Boolean(value));
  },
  get model() {
    return read("model", "");
  },
  set model(value) {
    write("model", value);
  },
  /** Mode, budget and calculator switch for the next new chat (each chat then remembers its own). */
  get draftMode() {
    return { mode: "auto", budget: null, calculator: false, ...read("draftMode", {}) };
  },
  set draftMode(value) {
    write("draftMode", value);
  },
};

/** Applies a theme to the page, the code highlighting theme included. */
export function applyTheme(theme) {
  const root = document.documentElement;
  if (theme === "light" || theme === "dark") root.dataset.theme = theme;
  else delete root.dataset.theme;
  const light = document.getElementById("hljs-light");
  const dark = document.getElementById("hljs-dark");
  light.media = theme === "light" ? "all" : theme === "dark" ? "not all" : "(prefers-color-scheme: light)";
  dark.media = theme === "dark" ? "all" : theme === "light" ? "not all" : "(prefers-color-scheme: dark)";
  const button = document.getElementById("theme-toggle");
  button.setAttribute("aria-label", `Theme: ${theme}`);
  button.title = `Theme: ${theme} (click to change)`;
  button.textContent = theme === "light" ? "☀" : theme === "dark" ? "☾" : "◐";
}
