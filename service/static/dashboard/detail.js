// One task in full, at its own URL (`?id=…`): arguments, worker, queue, runtime, result or
// error, links to its parent and children, and its timeline, which grows live as changes arrive.
import { $, TERMINAL, clock, duration, el, getJson, problemText, readJson, say, shortId } from "./util.js";
import { apply, cancelTask, detailHref, onApplied, progressOf, renderOutcome } from "./list.js";
import { watched } from "./live.js";

const ui = {
  panel: $("detail"),
  heading: $("detail-heading"),
  badge: $("detail-state"),
  facts: $("detail-facts"),
  outcome: $("detail-outcome"),
  links: $("detail-links"),
  timeline: $("timeline"),
  cancel: $("detail-cancel"),
  rerun: $("detail-rerun"),
  back: $("detail-back"),
};

let taskId = null;
let shown = null; // the latest snapshot shown
let lastSeq = 0;
let reloading = false;
// Changes went on while the detail was read: read it again once this read is done.
let reloadAgain = false;
let rereads = 0;

function json(value) {
  if (value === null || value === undefined) return "—";
  if (typeof value === "object" && value.truncated === true) {
    return `not kept: ${value.bytes} bytes, over the size cap`;
  }
  return JSON.stringify(value);
}

function taskLink(id) {
  return el("a", { href: detailHref(id), class: "task-link" }, el("code", { text: shortId(id), title: id }));
}

function fact(label, value) {
  return el("div", {}, el("dt", { text: label }), el("dd", {}, value));
}

function renderFacts(detail) {
  const snap = shown;
  const args = el("code", { class: "arguments", text: `args ${json(detail.args)} · kwargs ${json(detail.kwargs)}` });
  ui.facts.replaceChildren(
    fact("Task", el("span", { text: snap.task })),
    fact("Id", el("code", { text: snap.id })),
    fact("Arguments", args),
    fact("Worker", el("span", { class: "detail-worker", text: detail.worker || "—" })),
    fact("Queue", el("span", { text: detail.queue || "—" })),
    fact("Retries", el("span", { text: String(snap.retries ?? 0) })),
    fact("Runtime", el("span", { class: "detail-runtime", text: duration(detail.runtime) || "—" })),
    fact("Submitted", el("span", { text: clock(snap.submitted_at) })),
    fact("Finished", el("span", { text: clock(snap.finished_at) || "—" })),
  );
  const links = [];
  if (detail.rerun_of) links.push(fact("Re-run of", taskLink(detail.rerun_of)));
  if (detail.parent_id) links.push(fact("Parent", taskLink(detail.parent_id)));
  if (detail.root_id && detail.root_id !== snap.id && detail.root_id !== detail.parent_id) {
    links.push(fact("Root", taskLink(detail.root_id)));
  }
  if (detail.group_id) links.push(fact("Group", el("code", { text: shortId(detail.group_id), title: detail.group_id })));
  if (detail.children && detail.children.length) {
    const list = el("ul", { class: "children" }, ...detail.children.map((id) => el("li", {}, taskLink(id))));
    links.push(fact(`Children (${detail.children.length})`, list));
  }
  ui.links.replaceChildren(...links);
  ui.links.hidden = links.length === 0;
}

function renderHead() {
  ui.heading.textContent = `${shown.task} ${shortId(shown.id)}`;
  ui.badge.textContent = shown.state;
  ui.badge.dataset.state = shown.state;
  ui.panel.dataset.state = shown.state;
  ui.panel.dataset.seq = String(shown.seq);
  renderOutcome(ui.outcome, shown);
  ui.cancel.hidden = TERMINAL.has(shown.state);
}

function entry(e) {
  const message = e.message || (e.progress ? progressOf({ progress: e.progress, state: e.state }).text : "");
  return el(
    "li",
    { class: "timeline-entry", "data-seq": String(e.seq), "data-state": e.state },
    el("span", { class: "seq", text: `#${e.seq}` }),
    el("span", { class: "badge", "data-state": e.state, text: e.state }),
    el("time", { dateTime: e.at, text: clock(e.at) }),
    message ? el("span", { class: "timeline-message", text: message }) : null,
  );
}

// Read the whole detail again, now or as soon as the read under way is done.
function reload() {
  if (reloading) {
    reloadAgain = true;
    return;
  }
  load().catch(() => {});
}

async function load() {
  reloading = true;
  try {
    const detail = await getJson(`tasks/${encodeURIComponent(taskId)}/detail`);
    // A change newer than this answer may have come meanwhile: keep it, and read again.
    if (!shown || detail.snapshot.seq >= shown.seq) shown = detail.snapshot;
    else reloadAgain = true;
    renderHead();
    renderFacts(detail);
    ui.timeline.replaceChildren(...detail.timeline.map(entry));
    lastSeq = detail.timeline.length ? detail.timeline[detail.timeline.length - 1].seq : 0;
    ui.panel.setAttribute("aria-busy", "false");
    return detail;
  } finally {
    reloading = false;
    // Bounded: a history that went back (Redis lost it) must not read for ever.
    if (reloadAgain && rereads < 5) {
      rereads += 1;
      reloadAgain = false;
      load().catch(() => {});
    } else {
      rereads = 0;
      reloadAgain = false;
    }
  }
}

// A change of this task arrived (stream or poll): grow the timeline, or re-read it on a gap.
function onChange(snap) {
  if (snap.id !== taskId || !shown || snap.seq <= shown.seq) return;
  const wasRunning = !TERMINAL.has(shown.state);
  shown = snap;
  renderHead();
  if (snap.seq === lastSeq + 1) {
    const progress = snap.progress && typeof snap.progress === "object" ? snap.progress : null;
    ui.timeline.append(entry({ seq: snap.seq, state: snap.state, at: snap.updated_at, progress, message: progress?.message }));
    lastSeq = snap.seq;
  } else {
    reload();
  }
  // Worker, runtime and children are recorded beside the snapshot: read them again at the end.
  if (wasRunning && (TERMINAL.has(snap.state) || snap.state === "STARTED")) reload();
}

async function rerun() {
  ui.rerun.disabled = true;
  try {
    const response = await fetch(`tasks/${encodeURIComponent(taskId)}/rerun`, {
      method: "POST",
      headers: { Accept: "application/json, application/problem+json" },
    });
    const body = await readJson(response);
    if (response.status === 202 && body) {
      apply(body, true);
      say(`Re-running as task ${shortId(body.id)}.`);
      window.location.href = detailHref(body.id);
    } else {
      const text = `Could not re-run: ${problemText(body, response)}`;
      $("detail-error").textContent = text;
      $("detail-error").hidden = false;
      say(text);
    }
  } catch {
    say("Could not re-run: the server did not answer.");
  } finally {
    ui.rerun.disabled = false;
  }
}

export async function init(id) {
  taskId = id;
  watched.add(id);
  document.body.dataset.view = "detail";
  ui.panel.hidden = false;
  const back = new URLSearchParams(window.location.search);
  back.delete("id");
  const text = back.toString();
  ui.back.href = text ? `?${text}` : window.location.pathname;
  onApplied(onChange);
  // However the cancel is answered (202, or 409 when it had ended meanwhile), show the task as
  // it now is.
  ui.cancel.addEventListener("click", () => cancelTask(taskId, ui.cancel).then(reload));
  ui.rerun.addEventListener("click", rerun);
  try {
    await load();
    document.title = `${shown.task} ${shortId(shown.id)} · taskstream`;
  } catch {
    // Nothing to act on: no state, no cancel, no re-run; the id in full, as it was asked for.
    ui.heading.textContent = `Task ${id} not found`;
    ui.badge.hidden = true;
    ui.cancel.hidden = true;
    ui.rerun.hidden = true;
    ui.panel.setAttribute("aria-busy", "false");
    $("detail-error").textContent = "No such task here, or it has expired.";
    $("detail-error").hidden = false;
  }
}
