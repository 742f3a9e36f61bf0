// The sign-in screen: asks for an API key and checks it against /v1/models before keeping it.

import { ApiError } from "../api.js";

export class SignIn {
  constructor() {
    this.section = document.getElementById("signin");
    this.form = document.getElementById("signin-form");
    this.input = document.getElementById("api-key");
    this.error = document.getElementById("signin-error");
  }

  /**
   * Shows the form until a key is accepted by `check`.
   * @param {(key: string) => Promise<void>} check throws ApiError for a refused key
   * @param {string} [message] shown at once (e.g. why a stored key no longer works)
   * @returns {Promise<string>} the accepted key
   */
  ask(check, message = "") {
    this.section.hidden = false;
    this.error.textContent = message;
    this.input.value = "";
    this.input.focus();
    return new Promise((resolve) => {
      const onSubmit = async (event) => {
        event.preventDefault();
        const key = this.input.value.trim();
        if (!key) {
          this.error.textContent = "Enter an API key.";
          return;
        }
        const button = this.form.querySelector("button");
        button.disabled = true;
        this.error.textContent = "";
        try {
          await check(key);
          this.form.removeEventListener("submit", onSubmit);
          this.section.hidden = true;
          resolve(key);
        } catch (err) {
          this.error.textContent =
            err instanceof ApiError && (err.status === 401 || err.status === 403)
              ? "That API key was not accepted. Check it and try again."
              : err.plainWords || err.message;
          this.input.select();
        } finally {
          button.disabled = false;
        }
      };
      this.form.addEventListener("submit", onSubmit);
    });
  }
}
