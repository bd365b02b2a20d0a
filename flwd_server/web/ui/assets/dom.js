// Building the page from data, safely: every value becomes a text node or an attribute, never markup.

/** An element with attributes, listeners and children; strings become text nodes (never parsed as HTML). */
export function h(tag, props, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(props || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") el.className = value;
    else if (key === "text") el.textContent = value;
    else if (key === "dataset") Object.assign(el.dataset, value);
    else if (key.startsWith("on") && typeof value === "function") el.addEventListener(key.slice(2), value);
    else if (value === true) el.setAttribute(key, "");
    else el.setAttribute(key, String(value));
  }
  append(el, children);
  return el;
}

/** Append children (nodes, strings, numbers, nested arrays); null, undefined and false are skipped. */
export function append(el, children) {
  for (const child of [children].flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : String(child));
  }
  return el;
}

/** Replace every child of ``el``. */
export function replace(el, ...children) {
  el.replaceChildren();
  return append(el, children);
}

// Every run status, in the order the runs page's filter lists them (the server's RunStatus).
export const STATUSES = [
  "awaiting_approval",
  "queued",
  "running",
  "succeeded",
  "failed",
  "cancelled",
  "timed_out",
  "rejected",
  "lost",
];
const KNOWN_STATUSES = new Set(STATUSES);
const VERDICTS = new Set(["allow", "warn", "deny"]);

/** A status badge; the class comes from a fixed list, never straight from data. */
export function statusBadge(status) {
  const known = KNOWN_STATUSES.has(status) ? status : "unknown";
  return h("span", { class: `badge status-${known}`, dataset: { status: String(status) } }, String(status).replaceAll("_", " "));
}

export function verdictBadge(verdict) {
  const known = VERDICTS.has(verdict) ? verdict : "unknown";
  return h("span", { class: `badge verdict-${known}` }, String(verdict));
}

/** "12 s", "3 min 4 s", "2 h 5 min": short and exact enough for a table. */
export function formatDuration(seconds) {
  if (seconds === null || seconds === undefined || Number.isNaN(seconds)) return "";
  if (seconds < 1) return `${Math.round(seconds * 1000)} ms`;
  if (seconds < 60) return `${seconds.toFixed(seconds < 10 ? 1 : 0)} s`;
  const minutes = Math.floor(seconds / 60);
  if (minutes < 60) return `${minutes} min ${Math.round(seconds % 60)} s`;
  return `${Math.floor(minutes / 60)} h ${minutes % 60} min`;
}

/** A <time> with the local date and time, the ISO value in its datetime attribute. */
export function timeElement(iso) {
  if (!iso) return "";
  const date = new Date(iso);
  return h("time", { datetime: iso, title: iso }, date.toLocaleString());
}

export function secondsBetween(startIso, endIso) {
  if (!startIso || !endIso) return null;
  return (Date.parse(endIso) - Date.parse(startIso)) / 1000;
}

/** Tell screen-reader users what changed (the #status live region). */
export function announce(message) {
  const region = document.getElementById("status");
  if (region) region.textContent = message;
}

/** A problem (application/problem+json) as a paragraph: title, then detail. */
export function problemMessage(error, fallback = "Something went wrong") {
  const problem = (error && error.problem) || {};
  const title = problem.title || (error && error.message) || fallback;
  return problem.detail && problem.detail !== title ? `${title}: ${problem.detail}` : title;
}

export function errorBox(error, fallback) {
  return h("p", { class: "error", role: "alert" }, problemMessage(error, fallback));
}
