// The HTTP API, relative to the page: the page lives at API_ROOT + "ui/", behind a proxy's prefix or not.

const TOKEN_KEY = "flwd.token";

/** The API root: one level above the page's base (``/ui/`` -> ``/``, ``/flwd/ui/`` -> ``/flwd/``). */
export const API_ROOT = new URL("../", document.baseURI);

/** The bearer token lives in sessionStorage only: gone when the tab closes, never in a URL or a cookie. */
export const session = {
  get token() {
    return sessionStorage.getItem(TOKEN_KEY);
  },
  set token(value) {
    sessionStorage.setItem(TOKEN_KEY, value);
  },
  forget() {
    sessionStorage.removeItem(TOKEN_KEY);
  },
};

export class ApiError extends Error {
  constructor(status, problem) {
    super((problem && (problem.detail || problem.title)) || `HTTP ${status}`);
    this.status = status;
    this.problem = problem || {};
  }

  /** The 422 errors as {field -> message}. */
  fieldErrors() {
    const out = {};
    for (const item of this.problem.errors || []) {
      if (item && typeof item.field === "string") out[item.field] = String(item.message || "invalid");
    }
    return out;
  }
}

let unauthorized = () => {};

/** What to do when the server no longer accepts the token (expired, revoked): the app signs out. */
export function onUnauthorized(handler) {
  unauthorized = handler;
}

/** An absolute URL for an API path (``runs``, ``runs/ID``), with the query values that are set. */
export function apiUrl(path, params) {
  const url = new URL(path, API_ROOT);
  for (const [key, value] of Object.entries(params || {})) {
    if (value !== undefined && value !== null && value !== "") url.searchParams.set(key, String(value));
  }
  return url;
}

/**
 * Call the API with the session's token; JSON in, JSON out. A problem answer throws an ApiError;
 * a 401 also signs out (unless ``token`` is given: the sign-in form checks a token of its own).
 */
export async function api(method, path, { body, params, token, signal } = {}) {
  const bearer = token || session.token;
  const headers = { Accept: "application/json" };
  if (bearer) headers.Authorization = `Bearer ${bearer}`;
  const init = { method, headers, cache: "no-store", credentials: "omit", referrerPolicy: "no-referrer", signal };
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(apiUrl(path, params), init);
  } catch (error) {
    if (error.name === "AbortError") throw error;
    throw new ApiError(0, { title: "The server did not answer", detail: "check the connection and try again" });
  }
  const type = response.headers.get("Content-Type") || "";
  const data = type.includes("json") ? await response.json().catch(() => null) : null;
  if (!response.ok) {
    const error = new ApiError(response.status, data || { title: `HTTP ${response.status}` });
    if (response.status === 401 && !token) unauthorized(error);
    throw error;
  }
  return data;
}

/**
 * The id of the first event ``GET /events`` would send with these filters, read from the stream
 * itself (fetch can send the Authorization header) and then dropped. The runs list resumes its live
 * stream from the newest run's ``run.queued`` instead of replaying the whole history.
 */
export async function firstEventId(params, timeoutMs = 5000) {
  const controller = new AbortController();
  const timer = setTimeout(() => controller.abort(), timeoutMs);
  try {
    const response = await fetch(apiUrl("events", params), {
      headers: { Accept: "text/event-stream", Authorization: `Bearer ${session.token}` },
      cache: "no-store",
      credentials: "omit",
      signal: controller.signal,
    });
    if (!response.ok || !response.body) return null;
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let text = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return null;
      text += decoder.decode(value, { stream: true });
      const match = /(?:^|\n)id: ?(\d+)\n/.exec(text);
      if (match) return Number(match[1]);
    }
  } catch {
    return null;
  } finally {
    clearTimeout(timer);
    controller.abort();
  }
}
