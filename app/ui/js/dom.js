// Small DOM helpers: element construction without HTML strings (so no inline handlers or
// style attributes ever reach the page), and clipboard access with a fallback.

/**
 * Creates an element. `props`: `class`, `text`, `dataset` (object), `on` (event → handler),
 * properties that exist on the element (hidden, type, value, ...), anything else as attribute.
 * Children: nodes, strings, or null/false (skipped).
 */
export function h(tag, props = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") el.className = value;
    else if (key === "text") el.textContent = value;
    else if (key === "dataset") Object.assign(el.dataset, value);
    else if (key === "on") for (const [event, fn] of Object.entries(value)) el.addEventListener(event, fn);
    else if (key in el && !key.includes("-")) el[key] = value;
    else el.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : String(child));
  }
  return el;
}

/** Same for SVG elements (attributes only). */
export function svg(tag, attrs = {}, ...children) {
  const el = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [key, value] of Object.entries(attrs)) el.setAttribute(key, value);
  for (const child of children.flat()) if (child) el.append(child instanceof Node ? child : String(child));
  return el;
}

/** Copies text; falls back to a hidden textarea where the async clipboard is not allowed. */
export async function copyToClipboard(text) {
  if (navigator.clipboard && window.isSecureContext) {
    try {
      await navigator.clipboard.writeText(text);
      return;
    } catch {
      // permission refused (headless browsers, iframes): try the old way below
    }
  }
  const area = h("textarea", { class: "offscreen", value: text, readOnly: true });
  document.body.append(area);
  area.select();
  document.execCommand("copy");
  area.remove();
}

/** Shows `label` on a button for a moment ("Copied"), then its own text again. */
export function flashLabel(button, label) {
  const original = button.dataset.label || button.textContent;
  button.dataset.label = original;
  button.textContent = label;
  setTimeout(() => (button.textContent = original), 1200);
}

/** "3.4 s", "12 s", "2 min 5 s". */
export function formatSeconds(ms) {
  const s = ms / 1000;
  if (s < 10) return `${s.toFixed(1)} s`;
  if (s < 60) return `${Math.round(s)} s`;
  return `${Math.floor(s / 60)} min ${Math.round(s % 60)} s`;
}

/** "$0.000123" with enough digits to show tiny costs. */
export function formatCost(usd) {
  if (usd === null || usd === undefined || Number.isNaN(Number(usd))) return "–";
  const n = Number(usd);
  if (n === 0) return "$0";
  if (n >= 1) return `$${n.toFixed(2)}`;
  return `$${n.toPrecision(3).replace(/0+$/, "").replace(/\.$/, "")}`;
}

/** A short message at the bottom of the screen. */
export function toast(text) {
  const note = h("div", { class: "toast", role: "status", text });
  document.body.append(note);
  setTimeout(() => note.remove(), 4000);
}
