// Splits reasoning from the answer when an upstream sends raw <think>...</think> tags inside
// `delta.content` instead of a separate `reasoning_content` field. Tags may be split anywhere
// across chunks ("<thi" + "nk>"), so text that could be the start of a tag is held back until
// the next chunk decides it.

const OPEN = "<think>";
const CLOSE = "</think>";

export class ThinkTagSplitter {
  constructor() {
    this.inThink = false;
    this.pending = ""; // a possible partial tag held back from the previous chunk
    this.seenContent = false; // a <think> only opens reasoning before any answer text
  }

  /**
   * @param {string} text the next `delta.content` piece
   * @returns {{reasoning: string, content: string}} what this piece adds to each part
   */
  push(text) {
    let rest = this.pending + text;
    this.pending = "";
    let reasoning = "";
    let content = "";
    while (rest) {
      if (!this.inThink && this.seenContent) {
        // Answer text came first: any later "<think>" is just text in the answer.
        content += rest;
        break;
      }
      const tag = this.inThink ? CLOSE : OPEN;
      const at = rest.indexOf(tag);
      if (at >= 0) {
        const before = rest.slice(0, at);
        if (this.inThink) {
          reasoning += before;
          this.inThink = false;
        } else if (before.trim()) {
          content += before + tag;
          this.seenContent = true;
        } else {
          this.inThink = true; // leading whitespace before <think> is dropped
        }
        rest = rest.slice(at + tag.length);
        continue;
      }
      if (!this.inThink && !this.seenContent && !rest.trim().replace(/<[/a-z]*$/, "")) {
        // Only whitespace (and maybe the start of "<think>") so far: wait to see what follows.
        this.pending = rest;
        break;
      }
      const keep = partialTagSuffix(rest, tag);
      const emit = rest.slice(0, rest.length - keep);
      this.pending = rest.slice(rest.length - keep);
      if (this.inThink) {
        reasoning += emit;
      } else {
        content += emit;
        if (emit.trim()) this.seenContent = true;
      }
      break;
    }
    return { reasoning, content };
  }

  /** Whatever was held back, at the end of the stream. */
  flush() {
    const text = this.pending;
    this.pending = "";
    return this.inThink ? { reasoning: text, content: "" } : { reasoning: "", content: text };
  }
}

/** Length of the longest suffix of `text` that is a proper prefix of `tag`. */
function partialTagSuffix(text, tag) {
  for (let n = Math.min(tag.length - 1, text.length); n > 0; n--) {
    if (text.endsWith(tag.slice(0, n))) return n;
  }
  return 0;
}
