// The list of conversations (titles, most recent first) and the drawer behaviour at phone width.

import { h } from "../dom.js";

export class Sidebar {
  /** @param {{onOpen: (id: string) => void, onDelete: (id: string) => void}} handlers */
  constructor(handlers) {
    this.handlers = handlers;
    this.list = document.getElementById("conversation-list");
    this.empty = document.getElementById("conversation-empty");
    this.toggle = document.getElementById("toggle-sidebar");
    this.toggle.addEventListener("click", () => this.setOpen(!document.body.classList.contains("sidebar-open")));
    document.getElementById("scrim").addEventListener("click", () => this.setOpen(false));
  }

  /** Opens or closes the drawer (it is always visible on wide screens). */
  setOpen(open) {
    document.body.classList.toggle("sidebar-open", open);
    this.toggle.setAttribute("aria-expanded", String(open));
  }

  /**
   * @param {{id: string, title: string}[]} conversations most recent first
   * @param {string|null} activeId
   */
  render(conversations, activeId) {
    this.empty.hidden = conversations.length > 0;
    this.list.replaceChildren(
      ...conversations.map((c) =>
        h(
          "li",
          { class: c.id === activeId ? "active" : "" },
          h("button", {
            type: "button",
            class: "open-chat",
            text: c.title || "New chat",
            title: c.title,
            "aria-current": c.id === activeId ? "true" : null,
            on: {
              click: () => {
                this.setOpen(false);
                this.handlers.onOpen(c.id);
              },
            },
          }),
          h("button", {
            type: "button",
            class: "delete-chat",
            text: "✕",
            "aria-label": `Delete chat: ${c.title || "New chat"}`,
            on: { click: () => this.handlers.onDelete(c.id) },
          }),
        ),
      ),
    );
  }
}
