// The taskstream dashboard's entry module: signs in when authentication is on, then starts the
// task list, live updates, the submit form, the operations panels and, at `?id=…`, a task's detail.
import { params } from "./util.js";
import * as list from "./list.js";
import * as live from "./live.js";
import * as form from "./form.js";
import * as ops from "./ops.js";
import * as detail from "./detail.js";

// With authentication on (API_TOKENS), the page signs in once: the token is traded for an
// HttpOnly session cookie (POST session), which then carries the page's requests and its
// EventSource. The token itself is never stored by the page.
async function signedIn() {
  try {
    const probe = await fetch("task-types", { headers: { Accept: "application/json" } });
    if (probe.status !== 401) return true;
  } catch {
    return true; // unreachable: the usual retries take over
  }
  const form = document.getElementById("signin");
  document.body.dataset.view = "signin";
  form.hidden = false;
  form.querySelector("input").focus();
  return new Promise(() => {
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      const token = form.querySelector("input").value.trim();
      const error = form.querySelector("#signin-error");
      const answer = await fetch("session", {
        method: "POST",
        headers: { Authorization: `Bearer ${token}`, Accept: "application/json" },
      }).catch(() => null);
      if (answer && answer.ok) {
        window.location.reload();
        return;
      }
      error.textContent = answer ? "That token was not accepted." : "The server did not answer.";
      error.hidden = false;
    });
  });
}

// Signed in with a session (authentication on): who, and a way out. Signing the same session
// again with the cookie alone never moves its end; without authentication the name is empty.
async function showAccount() {
  const answer = await fetch("session", { method: "POST", headers: { Accept: "application/json" } }).catch(() => null);
  const body = answer && answer.ok ? await answer.json().catch(() => null) : null;
  if (!body || !body.name) return;
  document.getElementById("account-name").textContent = `Signed in as ${body.name}${body.admin ? " (admin)" : ""}`;
  document.getElementById("account").hidden = false;
  document.getElementById("signout").addEventListener("click", async () => {
    await fetch("session", { method: "DELETE" }).catch(() => null);
    window.location.reload();
  });
}

// A handle for tests and curious operators: read-only views of the page's state.
window.taskstreamDashboard = Object.freeze({
  get mode() {
    return live.state.mode;
  },
  get lastEventId() {
    return live.state.lastEventId;
  },
  snapshot(id) {
    return list.tasks.get(id) || null;
  },
  get rows() {
    return list.visibleRows();
  },
});

signedIn().then(() => {
  showAccount();
  list.init();
  form.init();
  form.loadTaskTypes();
  live.startUpdates();
  ops.init();
  const id = params.get("id");
  if (id) detail.init(id);
});
