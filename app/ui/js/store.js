// Conversations kept in the browser's IndexedDB, one record per conversation with its messages
// inline (conversations are small, and a whole one is always read and written at once).
//
// Conversation: {id, title, model, mode, budget, calculator, messages: Message[], createdAt, updatedAt}
// Message (user):      {id, role: "user", text, images: [dataURL], createdAt}
// Message (assistant): {id, role: "assistant", model, requestedMode, mode, modeReason, reasoning,
//                       content, status: "streaming"|"done"|"stopped"|"error", error, stats,
//                       thinkMs, reasoningTokens, rounds: Round[], toolCalls, toolLimit, createdAt}
//   reasoning, content, thinkMs, reasoningTokens and toolCalls ({id, name, arguments}) are the
//   last round's (the one streaming, or the answer); toolLimit: it still called tools after the
//   last round allowed.
// Round (a finished round that called tools): {reasoning, content, thinkMs, reasoningTokens,
//                       toolCalls: [{id, name, arguments, result}]}

const DB_NAME = "thinkgate";
const STORE = "conversations";
const EXPORT_FORMAT = "thinkgate.conversations.v1";

/** A random id, sortable enough to be readable in exports. */
export function newId() {
  return `${Date.now().toString(36)}-${crypto.getRandomValues(new Uint32Array(1))[0].toString(36)}`;
}

/** Wraps an IDBRequest (or transaction) in a promise. */
function done(request) {
  return new Promise((resolve, reject) => {
    if ("oncomplete" in request && !("result" in request)) {
      request.oncomplete = () => resolve();
      request.onerror = () => reject(request.error);
      request.onabort = () => reject(request.error);
    } else {
      request.onsuccess = () => resolve(request.result);
      request.onerror = () => reject(request.error);
    }
  });
}

export class ConversationStore {
  /** Opens (and on first use creates) the database. */
  static async open() {
    const request = indexedDB.open(DB_NAME, 1);
    request.onupgradeneeded = () => {
      const store = request.result.createObjectStore(STORE, { keyPath: "id" });
      store.createIndex("updatedAt", "updatedAt");
    };
    return new ConversationStore(await done(request));
  }

  constructor(db) {
    this.db = db;
  }

  store(mode) {
    return this.db.transaction(STORE, mode).objectStore(STORE);
  }

  /** All conversations, most recently updated first. */
  async list() {
    const all = await done(this.store("readonly").getAll());
    return all.sort((a, b) => b.updatedAt - a.updatedAt);
  }

  get(id) {
    return done(this.store("readonly").get(id));
  }

  async put(conversation) {
    await done(this.store("readwrite").put(conversation));
  }

  async delete(id) {
    await done(this.store("readwrite").delete(id));
  }

  /** Every conversation as one JSON document (images included, as data URLs). */
  async exportJSON() {
    const conversations = await this.list();
    return JSON.stringify({ format: EXPORT_FORMAT, exportedAt: new Date().toISOString(), conversations }, null, 2);
  }

  /**
   * Adds the conversations of an export; ones with the same id are replaced.
   * @returns {Promise<number>} how many were imported
   * @throws {Error} when the text is not such an export
   */
  async importJSON(text) {
    let doc;
    try {
      doc = JSON.parse(text);
    } catch {
      throw new Error("That file is not JSON.");
    }
    if (!doc || doc.format !== EXPORT_FORMAT || !Array.isArray(doc.conversations)) {
      throw new Error("That file is not a Thinkgate conversations export.");
    }
    const valid = doc.conversations.filter(
      (c) => c && typeof c.id === "string" && Array.isArray(c.messages),
    );
    const tx = this.db.transaction(STORE, "readwrite");
    for (const c of valid) {
      // An answer that was streaming when exported can never finish: keep what it has.
      for (const m of c.messages) if (m.status === "streaming") m.status = "stopped";
      tx.objectStore(STORE).put({ title: "Imported chat", updatedAt: Date.now(), createdAt: Date.now(), ...c });
    }
    await done(tx);
    return valid.length;
  }
}
