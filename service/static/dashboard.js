// The taskstream dashboard: recent tasks, updated live from one EventSource on GET /events,
// with a polling fallback, a submit form generated from GET /task-types, and cancel buttons.
//
// One rule keeps the view right whatever order answers arrive in: a task's snapshot is complete,
// so the one with the highest `seq` wins and anything older or equal is ignored. The list, the
// stream, the poller and the submit/cancel answers all feed the same apply().
"use strict";

(() => {
  const TERMINAL = new Set(["SUCCESS", "FAILURE", "REVOKED"]);
  // Every URL is relative to the page, so the dashboard works wherever the API is mounted.
  const LIST_URL = "tasks?limit=50";
  const POLL_MS = 1500;
  // How long the stream may stay unconnected (first connection or reconnection) before the page
  // polls instead, and how often polling mode then tries the stream again.
  const STREAM_GRACE_MS = 10000;
  const STREAM_RETRY_MS = 20000;
  // Unfinished tasks that fell off the first page are fetched one by one while polling, up to this
  // many per round.
  const STRAGGLERS_PER_POLL = 10;
  const MAX_TASKS = 100;

  const params = new URLSearchParams(window.location.search);
  // `?poll=1` (any value but 0) forces polling: for tests, and for proxies that break streaming.
  const forcePoll = params.has("poll") && params.get("poll") !== "0";
  const streamAvailable = typeof window.EventSource === "function";

  const $ = (id) => document.getElementById(id);
  const ui = {
    mode: $("mode"),
    modeSwitch: $("mode-switch"),
    status: $("status"),
    form: $("submit-form"),
    type: $("task-type"),
    description: $("task-description"),
    fields: $("task-fields"),
    formError: $("form-error"),
    submit: $("submit-button"),
    tasks: $("tasks"),
    empty: $("tasks-empty"),
  };

  const tasks = new Map(); // id -> the snapshot shown
  const rows = new Map(); // id -> the row's elements
  const mine = new Set(); // ids submitted from this page, whose endings are announced

  // ---- small helpers ----------------------------------------------------------------------

  function el(tag, attrs = {}, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs)) {
      if (value === null || value === undefined || value === false) continue;
      if (key === "class") node.className = value;
      else if (key === "text") node.textContent = value;
      else if (key in node && typeof value !== "string") node[key] = value;
      else node.setAttribute(key, value === true ? "" : value);
    }
    for (const child of children) {
      if (child !== null && child !== undefined) node.append(child);
    }
    return node;
  }

  function shortId(id) {
    return String(id).slice(0, 8);
  }

  function parseTime(iso) {
    if (!iso) return null;
    // Microseconds are more than Date promises to parse; milliseconds are enough to show.
    const date = new Date(String(iso).replace(/(\.\d{3})\d+/, "$1"));
    return Number.isNaN(date.getTime()) ? null : date;
  }

  function clock(iso) {
    const date = parseTime(iso);
    return date ? date.toLocaleTimeString([], { hour12: false }) : "";
  }

  function seconds(fromIso, toIso) {
    const from = parseTime(fromIso);
    const to = parseTime(toIso);
    if (!from || !to) return "";
    const s = Math.max(0, (to - from) / 1000);
    return s < 10 ? `${s.toFixed(2)} s` : `${s.toFixed(1)} s`;
  }

  function percentText(percent) {
    return Number.isInteger(percent) ? `${percent}%` : `${percent.toFixed(1)}%`;
  }

  // Announce through the polite live region. Clearing first makes a repeated message heard again.
  let sayTimer = null;
  function say(message) {
    ui.status.textContent = "";
    clearTimeout(sayTimer);
    sayTimer = setTimeout(() => {
      ui.status.textContent = message;
    }, 50);
  }

  async function readJson(response) {
    try {
      return await response.json();
    } catch {
      return null;
    }
  }

  function problemText(problem, response) {
    if (problem && (problem.title || problem.detail)) {
      return [problem.title, problem.detail].filter(Boolean).join(": ");
    }
    return `${response.status} ${response.statusText || "error"}`.trim();
  }

  // ---- the task list ----------------------------------------------------------------------

  function olderThanAllShown(snap) {
    for (const shown of tasks.values()) {
      if ((shown.submitted_at || "") <= (snap.submitted_at || "")) return false;
    }
    return true;
  }

  // Show `snap` if it is newer than what is shown. Returns whether it was applied.
  function apply(snap) {
    if (!snap || typeof snap.id !== "string" || typeof snap.seq !== "number") return false;
    const shown = tasks.get(snap.id);
    if (shown && shown.seq >= snap.seq) return false;
    if (!shown && tasks.size >= MAX_TASKS && olderThanAllShown(snap)) return false;
    tasks.set(snap.id, snap);
    render(snap);
    if (mine.has(snap.id) && TERMINAL.has(snap.state) && !(shown && TERMINAL.has(shown.state))) {
      announceEnd(snap);
    }
    if (!shown) trim();
    return true;
  }

  function announceEnd(snap) {
    const name = `${snap.task} task ${shortId(snap.id)}`;
    if (snap.state === "SUCCESS") say(`${name} succeeded.`);
    else if (snap.state === "FAILURE") say(`${name} failed: ${errorText(snap.error)}`);
    else say(`${name} was cancelled.`);
  }

  // Keep at most MAX_TASKS rows: drop the oldest finished tasks first.
  function trim() {
    while (tasks.size > MAX_TASKS) {
      let victim = null;
      for (const snap of tasks.values()) {
        const better =
          !victim ||
          (TERMINAL.has(snap.state) && !TERMINAL.has(victim.state)) ||
          (TERMINAL.has(snap.state) === TERMINAL.has(victim.state) &&
            (snap.submitted_at || "") < (victim.submitted_at || ""));
        if (better) victim = snap;
      }
      tasks.delete(victim.id);
      rows.get(victim.id)?.li.remove();
      rows.delete(victim.id);
    }
  }

  function errorText(error) {
    if (!error) return "";
    if (typeof error !== "object") return String(error);
    return error.type ? `${error.type}: ${error.message ?? ""}` : String(error.message ?? "");
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
      el("div", { class: "task-actions" }, row.cancel),
    );
    row.li = el("li", { class: "task", "data-task-id": snap.id }, row.article);
    return row;
  }

  function insertRow(snap, li) {
    // Newest first, by submission time (ISO timestamps in one format sort as text).
    const key = snap.submitted_at || "";
    for (const other of ui.tasks.children) {
      const otherSnap = tasks.get(other.dataset.taskId);
      const otherKey = (otherSnap && otherSnap.submitted_at) || "";
      if (otherKey < key || (otherKey === key && other.dataset.taskId < snap.id)) {
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

    renderOutcome(row, snap);

    if (terminal && !row.cancel.hidden) {
      // Keep keyboard focus on the task rather than losing it with the button.
      const hadFocus = document.activeElement === row.cancel;
      row.cancel.hidden = true;
      if (hadFocus) row.article.focus();
    } else if (!terminal) {
      row.cancel.hidden = false;
    }
    ui.empty.hidden = tasks.size > 0;
  }

  function renderProgress(row, snap) {
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
    const show = p !== null || snap.state === "SUCCESS" || working;
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

  function renderOutcome(row, snap) {
    row.outcome.replaceChildren();
    if (snap.state === "SUCCESS" && snap.result !== undefined) {
      const json = JSON.stringify(snap.result);
      const pretty = json && json.length > 60 ? JSON.stringify(snap.result, null, 2) : json;
      row.outcome.append(
        el("p", { class: "outcome-label", text: "Result" }),
        el("pre", { class: "result", text: pretty ?? "null" }),
      );
    }
    if (snap.error) {
      const error = typeof snap.error === "object" ? snap.error : { message: String(snap.error) };
      const label = snap.state === "FAILURE" ? "Error" : "Last error";
      row.outcome.append(
        el(
          "p",
          { class: "error-text task-error" },
          el("span", { class: "visually-hidden", text: `${label}: ` }),
          error.type ? el("strong", { class: "error-type", text: error.type }) : null,
          error.type ? ": " : null,
          el("span", { class: "error-message", text: String(error.message ?? "") }),
        ),
      );
    } else if (snap.state === "REVOKED") {
      row.outcome.append(el("p", { class: "hint", text: "Cancelled." }));
    }
  }

  async function refreshList() {
    const response = await fetch(LIST_URL, { cache: "no-store", headers: { Accept: "application/json" } });
    if (!response.ok) throw new Error(`GET /tasks answered ${response.status}`);
    const body = await response.json();
    const items = Array.isArray(body) ? body : body.items || [];
    // Oldest first, so rows are inserted in an order that needs no moving.
    for (const snap of items.slice().reverse()) apply(snap);
    ui.empty.hidden = tasks.size > 0;
    return new Set(items.map((snap) => snap.id));
  }

  async function refreshTask(id) {
    const response = await fetch(`tasks/${encodeURIComponent(id)}`, {
      cache: "no-store",
      headers: { Accept: "application/json" },
    });
    if (response.ok) apply(await response.json());
  }

  // ---- live updates and the polling fallback ----------------------------------------------

  const MODE_TEXT = {
    connecting: "connecting…",
    live: "live",
    reconnecting: "reconnecting…",
    polling: "polling",
    offline: "polling · server unreachable",
  };
  const MODE_TITLE = {
    connecting: "Opening the event stream.",
    live: "Changes arrive as they happen over one event stream.",
    reconnecting: "The event stream dropped; reconnecting and resuming where it left off.",
    polling: "Asking the server for changes every couple of seconds.",
    offline: "The server does not answer; still trying.",
  };
  let mode = "";
  let source = null;
  let lastEventId = "";
  let graceTimer = null;
  let retryTimer = null;
  let polling = false;
  let pollTimer = null;

  function setMode(next) {
    if (next === mode) return;
    const before = mode;
    mode = next;
    ui.mode.dataset.mode = next;
    ui.mode.textContent = MODE_TEXT[next];
    ui.mode.title = MODE_TITLE[next];
    if (before && (next === "polling" || next === "live") && before !== "offline") {
      say(next === "live" ? "Live updates connected." : "Live updates unavailable; polling for changes.");
    }
  }

  function openStream() {
    clearTimeout(retryTimer);
    // A fresh EventSource cannot send Last-Event-ID, so the id it should resume from goes in the
    // query; on its own reconnections the browser sends the header, which the server prefers.
    const url = lastEventId ? `events?last_event_id=${encodeURIComponent(lastEventId)}` : "events";
    const stream = new EventSource(url);
    source = stream;
    armGrace();
    stream.onopen = () => {
      if (stream !== source) return;
      clearTimeout(graceTimer);
      graceTimer = null;
      stopPolling();
      setMode("live");
      // The stream carries changes from now (or replays from lastEventId); the list covers
      // whatever it cannot, such as a first load or changes older than the server retains.
      refreshList().catch(() => {});
    };
    stream.onmessage = (event) => {
      if (stream !== source) return;
      if (event.lastEventId) lastEventId = event.lastEventId;
      let snap;
      try {
        snap = JSON.parse(event.data);
      } catch {
        return;
      }
      apply(snap);
    };
    stream.onerror = () => {
      if (stream !== source) return;
      if (stream.readyState === EventSource.CLOSED) {
        // The server refused the stream outright (not 200 text/event-stream): no reconnecting.
        fallBack();
        return;
      }
      // The browser reconnects by itself, sending Last-Event-ID; give it a while.
      if (!polling) setMode("reconnecting");
      armGrace();
    };
  }

  function armGrace() {
    if (graceTimer) return;
    graceTimer = setTimeout(() => {
      graceTimer = null;
      fallBack();
    }, STREAM_GRACE_MS);
  }

  function fallBack() {
    clearTimeout(graceTimer);
    graceTimer = null;
    if (source) source.close();
    source = null;
    startPolling();
    clearTimeout(retryTimer);
    retryTimer = setTimeout(openStream, STREAM_RETRY_MS);
  }

  function startPolling() {
    if (polling) return;
    polling = true;
    setMode("polling");
    pollOnce();
  }

  function stopPolling() {
    polling = false;
    clearTimeout(pollTimer);
  }

  async function pollOnce() {
    if (!polling) return;
    try {
      const listed = await refreshList();
      // Unfinished tasks shown but no longer on the first page still need their updates.
      const stragglers = [...tasks.values()]
        .filter((snap) => !TERMINAL.has(snap.state) && !listed.has(snap.id))
        .slice(0, STRAGGLERS_PER_POLL);
      await Promise.all(stragglers.map((snap) => refreshTask(snap.id).catch(() => {})));
      if (polling) setMode("polling");
    } catch {
      if (polling) setMode("offline");
    }
    if (polling) {
      clearTimeout(pollTimer);
      pollTimer = setTimeout(pollOnce, POLL_MS);
    }
  }

  function startUpdates() {
    ui.modeSwitch.textContent = forcePoll ? "use live updates" : "use polling";
    const switched = new URLSearchParams(params);
    if (forcePoll) switched.delete("poll");
    else switched.set("poll", "1");
    const query = switched.toString();
    ui.modeSwitch.href = query ? `?${query}` : window.location.pathname;

    if (forcePoll || !streamAvailable) {
      startPolling();
      return;
    }
    setMode("connecting");
    openStream();
    refreshList().catch(() => {});
  }

  // ---- cancel -----------------------------------------------------------------------------

  async function cancelTask(id, button) {
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
        apply(body);
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

  // ---- the submit form --------------------------------------------------------------------

  let taskTypes = [];
  let fieldInputs = new Map(); // argument name -> {input, error, kind, required}

  async function loadTaskTypes() {
    try {
      const response = await fetch("task-types", { headers: { Accept: "application/json" } });
      if (!response.ok) throw new Error(String(response.status));
      const body = await response.json();
      taskTypes = (Array.isArray(body) ? body : body.items || []).filter((t) => t && t.name);
    } catch {
      showFormError("Could not load the task types; retrying…");
      setTimeout(loadTaskTypes, 3000);
      return;
    }
    hideFormError();
    ui.type.replaceChildren(...taskTypes.map((t) => el("option", { value: t.name, text: t.name })));
    const wanted = params.get("task");
    if (wanted && taskTypes.some((t) => t.name === wanted)) ui.type.value = wanted;
    ui.type.disabled = taskTypes.length === 0;
    ui.submit.disabled = taskTypes.length === 0;
    renderFields();
  }

  function currentType() {
    return taskTypes.find((t) => t.name === ui.type.value) || null;
  }

  function constraintHint(prop, kind) {
    const parts = [kind === "integer" ? "whole number" : kind === "number" ? "number" : kind];
    if (typeof prop.minimum === "number") parts.push(`≥ ${prop.minimum}`);
    if (typeof prop.exclusiveMinimum === "number") parts.push(`> ${prop.exclusiveMinimum}`);
    if (typeof prop.maximum === "number") parts.push(`≤ ${prop.maximum}`);
    if (typeof prop.exclusiveMaximum === "number") parts.push(`< ${prop.exclusiveMaximum}`);
    if (typeof prop.maxLength === "number") parts.push(`up to ${prop.maxLength} characters`);
    if (prop.default !== undefined) parts.push(`default ${JSON.stringify(prop.default)}`);
    return parts.join(", ");
  }

  function propKind(prop) {
    let type = prop.type;
    if (Array.isArray(type)) type = type.find((t) => t !== "null");
    if (!type && Array.isArray(prop.anyOf)) {
      type = prop.anyOf.map((p) => p.type).find((t) => t && t !== "null");
    }
    if (Array.isArray(prop.enum)) return "enum";
    return ["number", "integer", "string", "boolean"].includes(type) ? type : "json";
  }

  function renderFields() {
    const type = currentType();
    ui.description.replaceChildren(...withCode(type ? type.description || "" : ""));
    const legend = ui.fields.querySelector("legend");
    ui.fields.replaceChildren(legend);
    fieldInputs = new Map();
    hideFormError();
    if (!type) return;
    const schema = type.schema || {};
    const props = schema.properties || {};
    const required = new Set(schema.required || []);
    const names = Object.keys(props);
    if (names.length === 0) {
      ui.fields.append(el("p", { class: "hint", text: "This task takes no arguments." }));
    }
    for (const name of names) {
      const prop = props[name] || {};
      const kind = propKind(prop);
      const id = `arg-${name}`;
      const hintId = `${id}-hint`;
      const errorId = `${id}-error`;
      const isRequired = required.has(name);
      let input;
      if (kind === "enum") {
        input = el("select", { id, name });
        if (!isRequired) input.append(el("option", { value: "", text: "—" }));
        for (const choice of prop.enum) {
          input.append(el("option", { value: JSON.stringify(choice), text: String(choice) }));
        }
        if (prop.default !== undefined) input.value = JSON.stringify(prop.default);
      } else if (kind === "boolean") {
        input = el("input", { id, name, type: "checkbox" });
        input.checked = prop.default === true;
      } else if (kind === "json") {
        input = el("textarea", { id, name, rows: 2, spellcheck: "false" });
        if (prop.default !== undefined) input.value = JSON.stringify(prop.default);
      } else {
        const numeric = kind === "number" || kind === "integer";
        input = el("input", {
          id,
          name,
          type: numeric ? "number" : "text",
          step: kind === "integer" ? "1" : numeric ? "any" : null,
          inputmode: kind === "integer" ? "numeric" : kind === "number" ? "decimal" : null,
          min: numeric && typeof prop.minimum === "number" ? String(prop.minimum) : null,
          max: numeric && typeof prop.maximum === "number" ? String(prop.maximum) : null,
          autocomplete: "off",
        });
        if (prop.default !== undefined && prop.default !== null) input.value = String(prop.default);
      }
      if (isRequired) input.setAttribute("aria-required", "true");
      input.setAttribute("aria-describedby", `${hintId} ${errorId}`);
      const error = el("p", { id: errorId, class: "error-text field-error", hidden: true });
      const constraints = constraintHint(prop, kind);
      const hint = prop.description ? `${prop.description} (${constraints})` : constraints;
      const label = el(
        "label",
        { for: id },
        prop.title || name,
        isRequired ? el("span", { class: "required", text: " (required)" }) : null,
      );
      const wrap = el(
        "div",
        { class: `field field-${kind}`, "data-field": name },
        label,
        input,
        el("p", { id: hintId, class: "hint", text: hint }),
        error,
      );
      input.addEventListener("input", () => clearFieldError(name));
      ui.fields.append(wrap);
      fieldInputs.set(name, { input, error, kind, required: isRequired });
    }
  }

  // Descriptions write argument names in backticks, as in Markdown: show those as code.
  function withCode(text) {
    return String(text)
      .split("`")
      .map((part, i) => (i % 2 ? el("code", { text: part }) : document.createTextNode(part)));
  }

  function showFormError(text) {
    ui.formError.textContent = text;
    ui.formError.hidden = false;
  }

  function hideFormError() {
    ui.formError.textContent = "";
    ui.formError.hidden = true;
  }

  function setFieldError(name, message) {
    const field = fieldInputs.get(name);
    if (!field) return false;
    const text = field.error.hidden ? message : `${field.error.textContent}; ${message}`;
    field.error.textContent = text;
    field.error.hidden = false;
    field.input.setAttribute("aria-invalid", "true");
    return true;
  }

  function clearFieldError(name) {
    const field = fieldInputs.get(name);
    if (!field) return;
    field.error.textContent = "";
    field.error.hidden = true;
    field.input.removeAttribute("aria-invalid");
  }

  function clearErrors() {
    for (const name of fieldInputs.keys()) clearFieldError(name);
    hideFormError();
  }

  // Read the fields into kwargs; returns null after marking any field the browser cannot read.
  function collectKwargs() {
    const kwargs = {};
    let ok = true;
    for (const [name, field] of fieldInputs) {
      const { input, kind, required } = field;
      if (kind === "boolean") {
        kwargs[name] = input.checked;
        continue;
      }
      const raw = input.value;
      if (kind === "number" || kind === "integer") {
        if (input.validity && input.validity.badInput) {
          setFieldError(name, "Enter a number.");
          ok = false;
        } else if (raw.trim() !== "") {
          const value = Number(raw);
          if (Number.isFinite(value)) kwargs[name] = value;
          else {
            setFieldError(name, "Enter a number.");
            ok = false;
          }
        }
        // Empty: left out, so the server applies the default or says it is required.
      } else if (kind === "enum") {
        if (raw !== "") kwargs[name] = JSON.parse(raw);
      } else if (kind === "json") {
        if (raw.trim() === "") continue;
        try {
          kwargs[name] = JSON.parse(raw);
        } catch {
          setFieldError(name, "Enter valid JSON.");
          ok = false;
        }
      } else if (raw !== "" || required) {
        kwargs[name] = raw;
      }
    }
    return ok ? kwargs : null;
  }

  // Find which field a server error names, however it spells the location: "seconds",
  // "kwargs.seconds", ["kwargs", "seconds"], "/kwargs/seconds", or "args[0]".
  function fieldOf(error) {
    let loc = error.field ?? error.loc ?? error.name ?? error.pointer ?? error.path;
    if (loc === undefined || loc === null) return null;
    const parts = Array.isArray(loc)
      ? loc.map(String)
      : String(loc).replace(/^#?\//, "").split(/[./]/);
    for (let i = parts.length - 1; i >= 0; i -= 1) {
      if (fieldInputs.has(parts[i])) return parts[i];
      const positional = /^args\[(\d+)\]$/.exec(parts[i]);
      if (positional) {
        const name = [...fieldInputs.keys()][Number(positional[1])];
        if (name) return name;
      }
    }
    return null;
  }

  function showProblem(problem, response) {
    const errors = problem && Array.isArray(problem.errors) ? problem.errors : [];
    const unplaced = [];
    let first = null;
    for (const error of errors) {
      const message = String(error.message ?? error.msg ?? error.detail ?? error.reason ?? "is not valid");
      const name = fieldOf(error);
      if (name && setFieldError(name, message)) {
        first = first || name;
      } else {
        const where = error.field ?? error.loc;
        unplaced.push(where ? `${Array.isArray(where) ? where.join(".") : where}: ${message}` : message);
      }
    }
    if (unplaced.length || !first) {
      showFormError([problemText(problem, response), ...unplaced].join(" — "));
    }
    if (first) fieldInputs.get(first).input.focus();
    say(errors.length ? "The task was not submitted: check the marked fields." : "The task was not submitted.");
  }

  async function submitTask(event) {
    event.preventDefault();
    const type = currentType();
    if (!type) return;
    clearErrors();
    const kwargs = collectKwargs();
    if (!kwargs) {
      const bad = [...fieldInputs.values()].find((f) => !f.error.hidden);
      if (bad) bad.input.focus();
      return;
    }
    ui.submit.disabled = true;
    ui.form.setAttribute("aria-busy", "true");
    try {
      const response = await fetch("tasks", {
        method: "POST",
        headers: {
          "Content-Type": "application/json",
          Accept: "application/json, application/problem+json",
        },
        body: JSON.stringify({ task: type.name, kwargs }),
      });
      const body = await readJson(response);
      if (response.status === 202 && body) {
        mine.add(body.id);
        apply(body);
        // A quick task may have ended on the stream before this answer came back.
        const now = tasks.get(body.id);
        if (now && TERMINAL.has(now.state)) announceEnd(now);
        else say(`Submitted ${type.name} task ${shortId(body.id)}.`);
      } else {
        showProblem(body, response);
      }
    } catch {
      showFormError("The server did not answer; the task may not have been submitted.");
    } finally {
      ui.submit.disabled = false;
      ui.form.removeAttribute("aria-busy");
    }
  }

  ui.type.addEventListener("change", renderFields);
  ui.form.addEventListener("submit", submitTask);

  // A handle for tests and curious operators: read-only views of the page's state.
  window.taskstreamDashboard = Object.freeze({
    get mode() {
      return mode;
    },
    get lastEventId() {
      return lastEventId;
    },
    snapshot(id) {
      return tasks.get(id) || null;
    },
  });

  // With authentication on (API_TOKENS), the page signs in once: the token is traded for an
  // HttpOnly session cookie (POST /session), which then carries the page's requests and its
  // EventSource. The token itself is never stored by the page.
  async function signedIn() {
    try {
      const probe = await fetch("task-types", { headers: { Accept: "application/json" } });
      if (probe.status !== 401) return true;
    } catch {
      return true; // unreachable: the usual retries take over
    }
    const form = document.createElement("form");
    form.id = "signin";
    form.className = "panel signin";
    form.setAttribute("aria-labelledby", "signin-heading");
    form.innerHTML =
      '<h2 id="signin-heading">Sign in</h2>' +
      '<label for="signin-token">API token</label>' +
      '<input id="signin-token" name="token" type="password" autocomplete="current-password" required>' +
      '<p id="signin-error" class="error-text" role="alert" hidden></p>' +
      '<button type="submit" class="button primary">Sign in</button>';
    document.querySelector("main").before(form);
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

  signedIn().then(() => {
    loadTaskTypes();
    startUpdates();
  });
})();
