// Small helpers shared by the dashboard's modules. Every URL the page uses is relative (no
// leading "/"), so the dashboard works wherever the service is mounted.

export const TERMINAL = new Set(["SUCCESS", "FAILURE", "REVOKED"]);
export const STATES = ["PENDING", "RECEIVED", "STARTED", "PROGRESS", "RETRY", "SUCCESS", "FAILURE", "REVOKED"];
export const OUTCOMES = ["SUCCESS", "FAILURE", "RETRY", "REVOKED"];

export const $ = (id) => document.getElementById(id);

export function el(tag, attrs = {}, ...children) {
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

export function shortId(id) {
  return String(id).slice(0, 8);
}

export function parseTime(iso) {
  if (!iso) return null;
  // Microseconds are more than Date promises to parse; milliseconds are enough to show.
  const date = new Date(String(iso).replace(/(\.\d{3})\d+/, "$1"));
  return Number.isNaN(date.getTime()) ? null : date;
}

export function clock(iso) {
  const date = parseTime(iso);
  return date ? date.toLocaleTimeString([], { hour12: false }) : "";
}

export function duration(s) {
  if (s === null || s === undefined || !Number.isFinite(s)) return "";
  if (s < 1) return `${Math.round(s * 1000)} ms`;
  return s < 10 ? `${s.toFixed(2)} s` : `${s.toFixed(1)} s`;
}

export function seconds(fromIso, toIso) {
  const from = parseTime(fromIso);
  const to = parseTime(toIso);
  if (!from || !to) return "";
  return duration(Math.max(0, (to - from) / 1000));
}

export function percentText(percent) {
  return Number.isInteger(percent) ? `${percent}%` : `${percent.toFixed(1)}%`;
}

export function errorText(error) {
  if (!error) return "";
  if (typeof error !== "object") return String(error);
  return error.type ? `${error.type}: ${error.message ?? ""}` : String(error.message ?? "");
}

// Announce through the polite live region. Clearing first makes a repeated message heard again.
let sayTimer = null;
export function say(message) {
  const status = $("status");
  status.textContent = "";
  clearTimeout(sayTimer);
  sayTimer = setTimeout(() => {
    status.textContent = message;
  }, 50);
}

export async function readJson(response) {
  try {
    return await response.json();
  } catch {
    return null;
  }
}

export function problemText(problem, response) {
  if (problem && (problem.title || problem.detail)) {
    return [problem.title, problem.detail].filter(Boolean).join(": ");
  }
  return `${response.status} ${response.statusText || "error"}`.trim();
}

// The session ended (logout elsewhere, or its time ran out): the page starts again at sign-in
// rather than polling on with every answer a 401.
export function checkSignedIn(response) {
  if (response.status === 401) window.location.reload();
}

export async function getJson(url) {
  const response = await fetch(url, { cache: "no-store", headers: { Accept: "application/json" } });
  checkSignedIn(response);
  if (!response.ok) throw new Error(`GET ${url} answered ${response.status}`);
  return response.json();
}

export const params = new URLSearchParams(window.location.search);
