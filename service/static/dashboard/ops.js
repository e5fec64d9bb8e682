// The operations panels: counts per state, workers, queues and throughput, read from the API
// every couple of seconds (workers report themselves in Redis; nothing here asks a worker).
import { $, OUTCOMES, STATES, duration, el, getJson, params } from "./util.js";
import { runtimeChart, throughputChart } from "./charts.js";
import { onApplied, setWorkerNames } from "./list.js";

const REFRESH_MS = 2000;
let timer = null;
let busy = false;
let soon = null;

function stateHref(state) {
  const query = new URLSearchParams(window.location.search);
  query.set("state", state);
  query.delete("id");
  return `?${query}`;
}

function renderCounts(states) {
  const box = $("counts");
  if (!box.children.length) {
    for (const state of STATES) {
      box.append(
        el(
          "li",
          { class: "count", "data-state": state },
          el("a", { href: stateHref(state) }, el("span", { class: "count-value", text: "0" }), el("span", { class: "count-label", text: state })),
        ),
      );
    }
  }
  for (const li of box.children) {
    li.querySelector(".count-value").textContent = String(states[li.dataset.state] ?? 0);
  }
}

function ago(now, then) {
  if (!then) return "never";
  const s = Math.max(0, now - then);
  return s < 60 ? `${s.toFixed(1)} s ago` : `${Math.round(s / 60)} min ago`;
}

function renderWorkers(body) {
  const rows = body.workers.map((w) =>
    el(
      "tr",
      { class: "worker", "data-hostname": w.hostname, "data-online": String(w.online) },
      el("th", { scope: "row" }, el("a", { href: workerHref(w.hostname), text: w.hostname })),
      el("td", {}, el("span", { class: "status-dot", "data-online": String(w.online), text: w.online ? "online" : "offline" })),
      el("td", { class: "num", text: w.pool ?? "—" }),
      el("td", { class: "num worker-active", text: String(w.active) }),
      el("td", { class: "num", text: String(w.reserved) }),
      el("td", { class: "num", text: String(w.processed) }),
      el("td", { class: "num", text: String(w.failed) }),
      el("td", { text: ago(body.now, w.heartbeat) }),
    ),
  );
  $("workers-body").replaceChildren(...rows);
  $("workers-empty").hidden = rows.length > 0;
  const online = body.workers.filter((w) => w.online).length;
  $("workers-summary").textContent = `${online} of ${body.workers.length} online`;
  setWorkerNames(body.workers.map((w) => w.hostname));
}

function workerHref(hostname) {
  const query = new URLSearchParams(window.location.search);
  query.set("worker", hostname);
  query.delete("id");
  return `?${query}`;
}

function renderQueues(body) {
  const rows = body.queues.map((q) =>
    el(
      "tr",
      { class: "queue", "data-queue": q.name },
      el("th", { scope: "row", text: q.name }),
      el("td", { class: "num queue-depth", text: q.depth === null ? "?" : String(q.depth) }),
      el("td", { class: "num queue-reserved", text: String(q.reserved) }),
      el("td", { text: String(q.workers.length) }),
    ),
  );
  $("queues-body").replaceChildren(...rows);
  $("queues-empty").hidden = rows.length > 0;
  $("queues-empty").textContent = body.broker ? "No worker is consuming a queue." : "The broker did not answer.";
}

function renderStats(body) {
  renderCounts(body.states);
  const total = throughputChart($("throughput-chart"), body.per_minute, OUTCOMES);
  const sums = Object.fromEntries(OUTCOMES.map((o) => [o, body.per_minute.reduce((s, m) => s + (m[o] || 0), 0)]));
  $("throughput-legend").replaceChildren(
    ...OUTCOMES.map((o) => el("li", { "data-outcome": o }, el("span", { class: "swatch", "data-outcome": o }), `${o} ${sums[o]}`)),
  );
  $("throughput-chart").dataset.total = String(total);
  runtimeChart($("runtime-chart"), body.runtimes, duration);
}

async function refresh() {
  if (busy) return;
  busy = true;
  try {
    const [workers, queues, stats] = await Promise.all([getJson("workers"), getJson("queues"), getJson("stats")]);
    renderWorkers(workers);
    renderQueues(queues);
    renderStats(stats);
    document.body.dataset.opsLoaded = "true";
    $("ops-stale").hidden = true;
  } catch (error) {
    // The stream may stay open while the service cannot read its store (Redis down): then
    // these panels are not current, and say so; the next round tries again.
    const stale = $("ops-stale");
    if (stale.hidden) {
      stale.textContent = `Not current since ${new Date().toLocaleTimeString()}: ${error.message}. Showing what the service last said.`;
      stale.hidden = false;
    }
  } finally {
    busy = false;
  }
}

// Changes on the stream make the counts move at once (at most one read a second).
function changed() {
  if (soon) return;
  soon = setTimeout(() => {
    soon = null;
    refresh();
  }, 1000);
}

export function init() {
  renderCounts({});
  refresh();
  timer = setInterval(refresh, Number(params.get("ops_ms")) || REFRESH_MS);
  onApplied(changed);
  return timer;
}
