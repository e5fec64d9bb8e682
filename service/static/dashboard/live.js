// Live updates: one EventSource on `events` for every change, with a polling fallback when the
// stream cannot be had (a proxy that buffers, no EventSource, the server refusing it).
import { $, TERMINAL, params, say } from "./util.js";
import { enqueue, refreshList, refreshTask, tasks } from "./list.js";

const POLL_MS = 1500;
// How long the stream may stay unconnected (first connection or reconnection) before the page
// polls instead, and how often polling mode then tries the stream again.
const STREAM_GRACE_MS = 10000;
const STREAM_RETRY_MS = 20000;
// Unfinished tasks that fell off the first page are fetched one by one while polling, up to this
// many per round.
const STRAGGLERS_PER_POLL = 10;

// `?poll=1` (any value but 0) forces polling: for tests, and for proxies that break streaming.
const forcePoll = params.has("poll") && params.get("poll") !== "0";
const streamAvailable = typeof window.EventSource === "function";

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

export const state = { mode: "", lastEventId: "" };
let source = null;
let graceTimer = null;
let retryTimer = null;
let polling = false;
let pollTimer = null;

function setMode(next) {
  if (next === state.mode) return;
  const before = state.mode;
  state.mode = next;
  const badge = $("mode");
  badge.dataset.mode = next;
  badge.textContent = MODE_TEXT[next];
  badge.title = MODE_TITLE[next];
  if (before && (next === "polling" || next === "live") && before !== "offline") {
    say(next === "live" ? "Live updates connected." : "Live updates unavailable; polling for changes.");
  }
}

function openStream() {
  clearTimeout(retryTimer);
  // A fresh EventSource cannot send Last-Event-ID, so the id it should resume from goes in the
  // query; on its own reconnections the browser sends the header, which the server prefers.
  const id = state.lastEventId;
  const url = id ? `events?last_event_id=${encodeURIComponent(id)}` : "events";
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
    if (event.lastEventId) state.lastEventId = event.lastEventId;
    let snap;
    try {
      snap = JSON.parse(event.data);
    } catch {
      return;
    }
    enqueue(snap);
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

// Extra ids to keep fresh while polling (the task shown in detail).
export const watched = new Set();

async function pollOnce() {
  if (!polling) return;
  try {
    const listed = await refreshList();
    // Unfinished tasks shown but no longer on the first page still need their updates.
    const stragglers = [...tasks.values()]
      .filter((snap) => !TERMINAL.has(snap.state) && !listed.has(snap.id))
      .map((snap) => snap.id)
      .slice(0, STRAGGLERS_PER_POLL);
    for (const id of watched) if (!listed.has(id)) stragglers.push(id);
    await Promise.all(stragglers.map((id) => refreshTask(id).catch(() => {})));
    if (polling) setMode("polling");
  } catch {
    if (polling) setMode("offline");
  }
  if (polling) {
    clearTimeout(pollTimer);
    pollTimer = setTimeout(pollOnce, POLL_MS);
  }
}

export function startUpdates() {
  const modeSwitch = $("mode-switch");
  modeSwitch.textContent = forcePoll ? "use live updates" : "use polling";
  const switched = new URLSearchParams(params);
  if (forcePoll) switched.delete("poll");
  else switched.set("poll", "1");
  const query = switched.toString();
  modeSwitch.href = query ? `?${query}` : window.location.pathname;

  if (forcePoll || !streamAvailable) {
    startPolling();
    return;
  }
  setMode("connecting");
  openStream();
  refreshList().catch(() => {});
}
