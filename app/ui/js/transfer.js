// Export of all conversations as one JSON file, and import of such a file.

import { h } from "./dom.js";

/**
 * Connects the sidebar's Export and Import buttons.
 * @param {import("./store.js").ConversationStore} store
 * @param {(message: string) => Promise<void>} onImported shows the outcome, refreshes the list
 */
export function wireTransfer(store, onImported) {
  const input = document.getElementById("import-file");
  document.getElementById("export-chats").addEventListener("click", () => exportChats(store));
  document.getElementById("import-chats").addEventListener("click", () => input.click());
  input.addEventListener("change", async () => {
    const file = input.files[0];
    input.value = "";
    if (!file) return;
    try {
      const count = await store.importJSON(await file.text());
      await onImported(`Imported ${count} chat${count === 1 ? "" : "s"}.`);
    } catch (err) {
      await onImported(err.message);
    }
  });
}

async function exportChats(store) {
  const blob = new Blob([await store.exportJSON()], { type: "application/json" });
  const url = URL.createObjectURL(blob);
  const link = h("a", { href: url, download: `thinkgate-chats-${new Date().toISOString().slice(0, 10)}.json` });
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10_000);
}
