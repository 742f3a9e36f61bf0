// Markdown to safe DOM: marked (GFM) → DOMPurify → the element; then KaTeX for maths and
// highlight.js for code blocks, both applied to the DOM (KaTeX's DOM renderer sets styles through
// the CSSOM, which the Content Security Policy allows, while style attributes in HTML are not).

import { Marked } from "../vendor/marked/marked.esm.js";
import DOMPurify from "../vendor/dompurify/purify.es.mjs";
import katex from "../vendor/katex/katex.mjs";
import hljs from "../vendor/highlight/highlight.min.js";

hljs.configure({ ignoreUnescapedHTML: true });

const escapeHtml = (s) => s.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;");
const escapeAttr = (s) => escapeHtml(s).replace(/"/g, "&quot;");

// Maths is tokenised by marked itself, so it is never looked for inside code spans or blocks,
// and "\(" is read before marked's own backslash escapes would eat it.
const mathBlock = {
  name: "mathBlock",
  level: "block",
  start: (src) => src.match(/^ {0,3}(\$\$|\\\[)/m)?.index,
  tokenizer(src) {
    const m = /^ {0,3}(?:\$\$([\s\S]+?)\$\$|\\\[([\s\S]+?)\\\])[ \t]*(?:\n|$)/.exec(src);
    if (m) return { type: "mathBlock", raw: m[0], tex: (m[1] ?? m[2]).trim() };
    return undefined;
  },
  renderer: (token) => `<div class="math" data-display="true" data-tex="${escapeAttr(token.tex)}"></div>\n`,
};

const mathInline = {
  name: "mathInline",
  level: "inline",
  start: (src) => src.match(/\$|\\\(|\\\[/)?.index,
  tokenizer(src) {
    // $$..$$ or \[..\] inside a paragraph: display maths.
    let m = /^(?:\$\$([^]+?)\$\$|\\\[([^]+?)\\\])/.exec(src);
    if (m) return { type: "mathInline", raw: m[0], tex: (m[1] ?? m[2]).trim(), display: true };
    // \(..\) or $..$ where the dollars hug the maths ("$x$", not "costs $5 and $6").
    m = /^(?:\\\(([^]+?)\\\)|\$(?=[^\s$])((?:\\\$|[^$\n])+?)(?<=[^\s\\])\$(?!\d))/.exec(src);
    if (m) return { type: "mathInline", raw: m[0], tex: (m[1] ?? m[2]).trim(), display: false };
    return undefined;
  },
  renderer: (token) =>
    `<span class="math" data-display="${token.display}" data-tex="${escapeAttr(token.tex)}"></span>`,
};

function makeMarked(breaks) {
  const marked = new Marked({ gfm: true, breaks });
  marked.use({
    extensions: [mathBlock, mathInline],
    // Raw HTML in a model's output is shown as text, not interpreted: "<image>" or "<b>" stay
    // visible as written (DOMPurify below is the second line of defence, not the only one).
    renderer: { html: (token) => escapeHtml(token.text) },
  });
  return marked;
}

const markdown = makeMarked(false);
// Reasoning is mostly plain text written one step per line: keep its line breaks.
const reasoningMarkdown = makeMarked(true);

// Links open in a new tab without a referrer; images are kept only when they are data URLs, so
// the page never asks another host for anything (the CSP would block it anyway).
DOMPurify.addHook("afterSanitizeAttributes", (node) => {
  if (node.tagName === "A" && node.hasAttribute("href")) {
    node.setAttribute("target", "_blank");
    node.setAttribute("rel", "noopener noreferrer");
  }
  if (node.tagName === "IMG" && !/^data:image\//.test(node.getAttribute("src") || "")) {
    node.replaceWith(document.createTextNode(node.getAttribute("alt") || ""));
  }
});

const PURIFY_OPTIONS = { FORBID_ATTR: ["style"], FORBID_TAGS: ["style", "form", "input"] };

/**
 * Renders markdown `text` into `element`, replacing what it held.
 * @param {HTMLElement} element
 * @param {string} text
 * @param {{ lineBreaks?: boolean }} [options] lineBreaks: a single newline is a line break (reasoning)
 */
export function renderMarkdown(element, text, options = {}) {
  const html = (options.lineBreaks ? reasoningMarkdown : markdown).parse(text);
  element.innerHTML = DOMPurify.sanitize(html, PURIFY_OPTIONS);
  for (const node of element.querySelectorAll(".math[data-tex]")) renderMath(node);
  for (const code of element.querySelectorAll("pre > code")) decorateCodeBlock(code);
}

function renderMath(node) {
  try {
    katex.render(node.dataset.tex, node, {
      displayMode: node.dataset.display === "true",
      // KaTeX's own error rendering sets a style attribute, which the CSP blocks: show the
      // source instead, marked as not understood.
      throwOnError: true,
      output: "htmlAndMathml",
    });
  } catch (err) {
    node.textContent = node.dataset.tex;
    node.classList.add("math-error");
    node.title = err.message;
  }
}

/** Language label, highlighting and a copy button around one `<pre><code>`. */
function decorateCodeBlock(code) {
  const pre = code.parentElement;
  const lang = (/language-([\w+#.-]+)/.exec(code.className) || [])[1] || "";
  if (lang && hljs.getLanguage(lang)) {
    hljs.highlightElement(code);
  } else if (!lang && code.textContent.length < 4000) {
    const guess = hljs.highlightAuto(code.textContent);
    if (guess.relevance > 5) {
      code.innerHTML = guess.value; // highlight.js escapes the text it returns
      code.classList.add("hljs");
    }
  }
  const header = document.createElement("div");
  header.className = "code-header";
  const label = document.createElement("span");
  label.textContent = lang || "code";
  const copy = document.createElement("button");
  copy.type = "button";
  copy.className = "copy-code small";
  copy.textContent = "Copy code";
  header.append(label, copy);
  const wrapper = document.createElement("div");
  wrapper.className = "code-block";
  pre.replaceWith(wrapper);
  wrapper.append(header, pre);
}
