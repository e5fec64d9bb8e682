// The task list: filters kept in the URL, pages past the first, and rows updated in place.
//
// One rule keeps the view right whatever order answers arrive in: a task's snapshot is complete,
// so the one with the highest `seq` wins and anything older or equal is ignored. The list, the
// stream, the poller and the submit/cancel/re-run answers all feed the same apply(). Changes from
// the stream are batched into one DOM update per animation frame, so bursts never stutter.
import {
  $, TERMINAL, checkSignedIn, clock, el, errorText, params, percentText, problemText, readJson,
  say, seconds, shortId,
} from "./util.js";

const PAGE = 100;
// Rows kept before the oldest finished ones are dropped; paging raises it.
let maxTasks = 1000;

export const tasks = new Map(); // id -> the snapshot shown
const rows = new Map(); // id -> the row's elements
export const mine = new Set(); // ids submitted from this page, whose endings are announced
const listeners = [];
let nextCursor = null;
// The newest submission time (Unix seconds) of the rows trim() pushed out, or null: "Load older"
// continues from there, since nextCursor points past every row that went.
let droppedNewest = null;

const ui = {
  tasks: $("tasks"),
  empty: $("tasks-empty"),
  more: $("load-more"),
  form: $("filters"),
};

// ---- filters ----------------------------------------------------------------------------------

function unix(local) {
  if (!local) return null;
  const t = new Date(local).getTime();
  return Number.isNaN(t) ? null : t / 1000;
}

export const filters = {
  states: (params.get("state") || "").split(",").filter(Boolean),
  name: params.get("name") || "",
  worker: params.get("worker") || "",
  q: params.get("q") || "",
  since: params.get("since") || "",
  until: params.get("until") || "",
};

function filtering() {
  return Boolean(filters.states.length || filters.name || filters.worker || filters.q || filters.since || filters.until);
}

function showEmpty() {
  ui.empty.hidden = tasks.size > 0;
  ui.empty.textContent = filtering()
    ? "No task matches these filters."
    : "No tasks yet. Submit one with the form.";
}

// With the worker filter on, a task it does not show yet may have started on that worker: the
// snapshot does not say which worker, so the server's list is asked again, at most once a second.
let relistTimer = null;
function relistSoon() {
  if (relistTimer) return;
  relistTimer = setTimeout(() => {
    relistTimer = null;
    refreshList().catch(() => {});
  }, 1000);
}

function listUrl(cursor, until = null) {
  const query = new URLSearchParams({ limit: String(PAGE) });
  if (filters.states.length) query.set("state", filters.states.join(","));
  if (filters.name) query.set("task", filters.name);
  if (filters.worker) query.set("worker", filters.worker);
  if (filters.q) query.set("id_prefix", filters.q);
  if (unix(filters.since) !== null) query.set("since", String(unix(filters.since)));
  const bound = [unix(filters.until), until].filter((t) => t !== null);
  if (bound.length) query.set("until", String(Math.min(...bound)));
  if (cursor) query.set("cursor", cursor);
  return `tasks?${query}`;
}

// Whether a snapshot from the stream belongs in the filtered list. The worker is not in the
// snapshot: with that filter on, only tasks the server listed are shown (and kept up to date).
// submitted_at carries microseconds, Date.parse takes milliseconds: Unix seconds, or NaN.
function submittedUnix(snap) {
  return Date.parse(String(snap.submitted_at || "").replace(/(\.\d{3})\d+/, "$1")) / 1000;
}

function matches(snap) {
  if (filters.states.length && !filters.states.includes(snap.state)) return false;
  if (filters.name && snap.task !== filters.name) return false;
  if (filters.q && !snap.id.startsWith(filters.q)) return false;
  const submitted = submittedUnix(snap);
  if (unix(filters.since) !== null && submitted < unix(filters.since)) return false;
  if (unix(filters.until) !== null && submitted > unix(filters.until)) return false;
  return true;
}

function fillFilterForm() {
  const form = ui.form;
  for (const box of form.querySelectorAll('input[name="state"]')) box.checked = filters.states.includes(box.value);
  form.elements.name.value = filters.name;
  form.elements.worker.value = filters.worker;
  form.elements.q.value = filters.q;
  form.elements.since.value = filters.since;
  form.elements.until.value = filters.until;
}

export function setTaskNames(names) {
  const select = ui.form.elements.name;
  const keep = filters.name;
  select.replaceChildren(el("option", { value: "", text: "any" }), ...names.map((n) => el("option", { value: n, text: n })));
  if (keep && !names.includes(keep)) select.append(el("option", { value: keep, text: keep }));
  select.value = keep;
}

export function setWorkerNames(names) {
  const list = $("worker-names");
  const known = new Set([...list.children].map((o) => o.value));
  for (const name of names) if (!known.has(name)) list.append(el("option", { value: name }));
}

// Filters change the URL (so a view can be shared and survives a reload), then the page loads it.
function applyFilters(event) {
  event.preventDefault();
  const form = ui.form;
  const query = new URLSearchParams(window.location.search);
  const states = [...form.querySelectorAll('input[name="state"]:checked')].map((b) => b.value);
  const values = {
    state: states.join(","),
    name: form.elements.name.value,
    worker: form.elements.worker.value.trim(),
    q: form.elements.q.value.trim(),
    since: form.elements.since.value,
    until: form.elements.until.value,
  };
  for (const [key, value] of Object.entries(values)) {
    if (value) query.set(key, value);
    else query.delete(key);
  }
  query.delete("id");
  const text = query.toString();
  window.location.href = text ? `?${text}` : window.location.pathname;
}

// ---- applying snapshots -----------------------------------------------------------------------

export function onApplied(fn) {
  listeners.push(fn);
}

function olderThanAllShown(snap) {
  for (const shown of tasks.values()) {
    if ((shown.submitted_at || "") <= (snap.submitted_at || "")) return false;
  }
  return true;
}

// Show `snap` if it is newer than what is shown. Returns whether it was applied.
export function apply(snap, listed = false) {
  if (!snap || typeof snap.id !== "string" || typeof snap.seq !== "number") return false;
  const shown = tasks.get(snap.id);
  if (shown && shown.seq >= snap.seq) return false;
  for (const fn of listeners) fn(snap, shown);
  if (!listed && !mine.has(snap.id) && !matches(snap)) {
    if (shown) remove(snap.id);
    return false;
  }
  if (!shown && !listed && filters.worker) {
    if (snap.state !== "PENDING") relistSoon();
    return false;
  }
  if (!shown && tasks.size >= maxTasks && olderThanAllShown(snap)) return false;
  tasks.set(snap.id, snap);
  render(snap);
  if (mine.has(snap.id) && TERMINAL.has(snap.state) && !(shown && TERMINAL.has(shown.state))) {
    announceEnd(snap);
  }
  if (!shown) trim();
  return true;
}

let pending = new Map();
let frame = 0;

// For the stream: many changes a second become one DOM update per frame.
export function enqueue(snap) {
  if (!snap || typeof snap.id !== "string") return;
  const waiting = pending.get(snap.id);
  if (!waiting || waiting.seq < snap.seq) pending.set(snap.id, snap);
  if (!frame) frame = requestAnimationFrame(flush);
}

function flush() {
  frame = 0;
  const batch = pending;
  pending = new Map();
  const start = performance.now();
  for (const snap of batch.values()) apply(snap);
  showEmpty();
  // The script time of each batch, for bench/dashboard.py (Performance API, User Timing).
  performance.measure("taskstream:apply", { start, detail: batch.size });
}

export function announceEnd(snap) {
  const name = `${snap.task} task ${shortId(snap.id)}`;
  if (snap.state === "SUCCESS") say(`${name} succeeded.`);
  else if (snap.state === "FAILURE") say(`${name} failed: ${errorText(snap.error)}`);
  else if (snap.error) say(`${name} was revoked: ${errorText(snap.error)}`);
  else say(`${name} was cancelled.`);
}

function remove(id) {
  tasks.delete(id);
  rows.get(id)?.li.remove();
  rows.delete(id);
}

// Keep at most maxTasks rows: drop the oldest finished tasks first.
function trim() {
  while (tasks.size > maxTasks) {
    let victim = null;
    for (const snap of tasks.values()) {
      const better =
        !victim ||
        (TERMINAL.has(snap.state) && !TERMINAL.has(victim.state)) ||
        (TERMINAL.has(snap.state) === TERMINAL.has(victim.state) &&
          (snap.submitted_at || "") < (victim.submitted_at || ""));
      if (better) victim = snap;
    }
    // A millisecond more (submittedUnix drops the microseconds) keeps the row itself inside the
    // bound of the page that brings it back.
    const submitted = submittedUnix(victim);
    if (!Number.isNaN(submitted)) droppedNewest = Math.max(droppedNewest ?? 0, submitted + 0.001);
    remove(victim.id);
  }
}

// ---- rows -------------------------------------------------------------------------------------

export function detailHref(id) {
  const query = new URLSearchParams(window.location.search);
  query.set("id", id);
  return `?${query}`;
}

function buildRow(snap) {
  const titleId = `task-${snap.id}-title`;
  const row = {};
  row.name = el("span", { class: "task-name" });
  row.idCode = el("code", { class: "task-id", title: snap.id, text: shortId(snap.id) });
  row.badge = el("span", { class: "badge" });
  row.bar = el("progress", { max: 100, "aria-labelledby": titleId });
  row.barText = el("span", { class: "progress-text" });
  row.progress = el("div", { class: "task-progress" }, row.bar, row.barText);
  row.submitted = el("time");
  row.timingLabel = el("dt");
  row.timing = el("dd");
  row.retries = el("dd");
  row.outcome = el("div", { class: "task-outcome" });
  row.cancel = el("button", { type: "button", class: "button cancel" }, "Cancel");
  row.cancel.append(el("span", { class: "visually-hidden", text: ` ${snap.task} ${shortId(snap.id)}` }));
  row.cancel.addEventListener("click", () => cancelTask(snap.id, row.cancel));
  row.detail = el("a", { class: "button detail-link", href: detailHref(snap.id) }, "Details");
  row.detail.append(el("span", { class: "visually-hidden", text: ` of ${snap.task} ${shortId(snap.id)}` }));
  row.article = el(
    "article",
    { class: "task-card", "aria-labelledby": titleId, tabindex: "-1" },
    el(
      "div",
      { class: "task-head" },
      el("h3", { id: titleId, class: "task-title" }, row.name, " ", row.idCode),
      row.badge,
    ),
    row.progress,
    el(
      "dl",
      { class: "task-meta" },
      el("div", {}, el("dt", { text: "Submitted" }), el("dd", {}, row.submitted)),
      el("div", {}, row.timingLabel, row.timing),
      el("div", {}, el("dt", { text: "Retries" }), row.retries),
    ),
    row.outcome,
    el("div", { class: "task-actions" }, row.detail, row.cancel),
  );
  row.li = el("li", { class: "task", "data-task-id": snap.id }, row.article);
  return row;
}

function insertRow(snap, li) {
  // Newest first, by submission time (ISO timestamps in one format sort as text). Most rows
  // arrive newest (top) or oldest (bottom, paging), so check both ends before walking the list.
  const key = snap.submitted_at || "";
  const before = (other) => {
    const otherSnap = tasks.get(other.dataset.taskId);
    const otherKey = (otherSnap && otherSnap.submitted_at) || "";
    return otherKey < key || (otherKey === key && other.dataset.taskId < snap.id);
  };
  const first = ui.tasks.firstElementChild;
  if (!first || before(first)) {
    ui.tasks.prepend(li);
    return;
  }
  const last = ui.tasks.lastElementChild;
  if (!before(last)) {
    ui.tasks.append(li);
    return;
  }
  for (const other of ui.tasks.children) {
    if (before(other)) {
      ui.tasks.insertBefore(li, other);
      return;
    }
  }
  ui.tasks.append(li);
}

function render(snap) {
  let row = rows.get(snap.id);
  if (!row) {
    row = buildRow(snap);
    rows.set(snap.id, row);
    insertRow(snap, row.li);
  }
  const terminal = TERMINAL.has(snap.state);
  row.li.dataset.state = snap.state;
  row.li.dataset.seq = String(snap.seq);
  row.name.textContent = snap.task;
  row.badge.textContent = snap.state;
  row.badge.dataset.state = snap.state;
  renderProgress(row, snap);
  row.submitted.dateTime = snap.submitted_at || "";
  row.submitted.textContent = clock(snap.submitted_at);
  if (snap.finished_at) {
    row.timingLabel.textContent = "Took";
    row.timing.textContent = seconds(snap.started_at || snap.submitted_at, snap.finished_at);
  } else if (snap.started_at) {
    row.timingLabel.textContent = "Started";
    row.timing.textContent = clock(snap.started_at);
  } else {
    row.timingLabel.textContent = "Queued";
    row.timing.textContent = "waiting";
  }
  row.retries.textContent = String(snap.retries ?? 0);
  renderOutcome(row.outcome, snap);
  if (terminal && !row.cancel.hidden) {
    // Keep keyboard focus on the task rather than losing it with the button.
    const hadFocus = document.activeElement === row.cancel;
    row.cancel.hidden = true;
    if (hadFocus) row.article.focus();
  } else if (!terminal) {
    row.cancel.hidden = false;
  }
  showEmpty();
}

export function progressOf(snap) {
  const p = snap.progress && typeof snap.progress === "object" ? snap.progress : null;
  let percent = p && typeof p.percent === "number" ? p.percent : null;
  let text = "";
  if (p) {
    if (percent === null && typeof p.current === "number" && typeof p.total === "number" && p.total > 0) {
      percent = Math.min(100, Math.max(0, (p.current / p.total) * 100));
    }
    const parts = [];
    if (percent !== null) parts.push(percentText(percent));
    else if (p.current !== null && p.current !== undefined) parts.push(String(p.current));
    if (p.message) parts.push(String(p.message));
    text = parts.join(" · ");
  } else if (snap.state === "SUCCESS") {
    // A task that reports no progress is all done once it succeeds.
    percent = 100;
    text = "100%";
  }
  const working = ["STARTED", "PROGRESS", "RETRY"].includes(snap.state);
  return { percent, text, show: p !== null || snap.state === "SUCCESS" || working };
}

function renderProgress(row, snap) {
  const { percent, text, show } = progressOf(snap);
  row.progress.hidden = !show;
  if (!show) return;
  if (percent === null) {
    // Indeterminate: no value attribute at all.
    row.bar.removeAttribute("value");
    row.bar.removeAttribute("aria-valuetext");
    row.barText.textContent = text || "working…";
  } else {
    row.bar.value = percent;
    row.bar.setAttribute("aria-valuetext", text);
    row.barText.textContent = text;
  }
}

export function renderOutcome(box, snap) {
  box.replaceChildren();
  if (snap.state === "SUCCESS" && snap.result !== undefined) {
    const json = JSON.stringify(snap.result);
    const pretty = json && json.length > 60 ? JSON.stringify(snap.result, null, 2) : json;
    box.append(
      el("p", { class: "outcome-label", text: "Result" }),
      el("pre", { class: "result", text: pretty ?? "null" }),
    );
  }
  if (snap.error) {
    const error = typeof snap.error === "object" ? snap.error : { message: String(snap.error) };
    // A REVOKED task's error says why (Celery's reason, or Ignore): a cancel has none.
    const label = { FAILURE: "Error", REVOKED: "Revoked" }[snap.state] ?? "Last error";
    box.append(
      el(
        "p",
        { class: "error-text task-error" },
        el("span", { class: "visually-hidden", text: `${label}: ` }),
        error.type ? el("strong", { class: "error-type", text: error.type }) : null,
        error.type ? ": " : null,
        el("span", { class: "error-message", text: String(error.message ?? "") }),
      ),
    );
    if (error.traceback) box.append(el("pre", { class: "traceback", text: error.traceback }));
  } else if (snap.state === "REVOKED") {
    box.append(el("p", { class: "hint", text: "Cancelled." }));
  }
}

// ---- loading ----------------------------------------------------------------------------------

async function fetchPage(cursor, until = null) {
  const response = await fetch(listUrl(cursor, until), { cache: "no-store", headers: { Accept: "application/json" } });
  checkSignedIn(response);
  if (!response.ok) throw new Error(`GET tasks answered ${response.status}`);
  return response.json();
}

// The first page again: what the stream cannot cover (first load, changes older than retained).
export async function refreshList() {
  const body = await fetchPage(null);
  const items = body.items || [];
  // Oldest first, so rows are inserted in an order that needs no moving.
  for (const snap of items.slice().reverse()) apply(snap, true);
  if (nextCursor === null && body.next && !loadedMore) nextCursor = body.next;
  ui.more.hidden = !olderToLoad();
  showEmpty();
  return new Set(items.map((snap) => snap.id));
}

let loadedMore = false;

function olderToLoad() {
  return Boolean(nextCursor) || droppedNewest !== null;
}

async function loadMore() {
  if (!olderToLoad()) return;
  ui.more.disabled = true;
  try {
    // Rows pushed out by live tasks come first: from the newest of them, down.
    const dropped = droppedNewest;
    const body = dropped !== null ? await fetchPage(null, dropped) : await fetchPage(nextCursor);
    loadedMore = true;
    maxTasks += PAGE;
    for (const snap of body.items || []) apply(snap, true);
    nextCursor = body.next;
    if (dropped !== null && droppedNewest === dropped) droppedNewest = null;
    say(`${(body.items || []).length} more tasks shown.`);
  } catch {
    say("Could not load more tasks.");
  } finally {
    ui.more.disabled = false;
    ui.more.hidden = !olderToLoad();
  }
}

export async function refreshTask(id) {
  const response = await fetch(`tasks/${encodeURIComponent(id)}`, {
    cache: "no-store",
    headers: { Accept: "application/json" },
  });
  if (response.ok) apply(await response.json(), true);
}

// ---- actions ----------------------------------------------------------------------------------

export async function cancelTask(id, button) {
  const snap = tasks.get(id);
  const name = snap ? `${snap.task} task ${shortId(id)}` : `task ${shortId(id)}`;
  button.disabled = true;
  try {
    const response = await fetch(`tasks/${encodeURIComponent(id)}`, {
      method: "DELETE",
      headers: { Accept: "application/json, application/problem+json" },
    });
    const body = await readJson(response);
    if (response.status === 202) {
      apply(body, true);
      say(`Cancelling ${name}.`);
    } else if (response.status === 409) {
      say(`${name} had already finished.`);
      await refreshTask(id);
    } else {
      say(`Could not cancel ${name}: ${problemText(body, response)}`);
    }
  } catch {
    say(`Could not cancel ${name}: the server did not answer.`);
  } finally {
    button.disabled = false;
  }
}

export function visibleRows() {
  return ui.tasks.children.length;
}

export function init() {
  fillFilterForm();
  ui.form.addEventListener("submit", applyFilters);
  ui.more.addEventListener("click", loadMore);
  $("filters-clear").addEventListener("click", () => {
    const query = new URLSearchParams(window.location.search);
    for (const key of ["state", "name", "worker", "q", "since", "until", "id"]) query.delete(key);
    const text = query.toString();
    window.location.href = text ? `?${text}` : window.location.pathname;
  });
  $("filters-summary").textContent = filtering() ? "Filtered" : "";
}
