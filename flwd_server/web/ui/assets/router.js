// Client-side routes under the page's base: "" runs, "runs/ID", "jobs", "jobs/SOURCE:NAME", "sources".

const listeners = [];

/** The page's root URL (``/ui/`` or ``/PREFIX/ui/``), from <base href>. */
export const BASE = new URL(document.baseURI);

/** The route's path segments below the base, decoded one by one. */
export function currentRoute() {
  const path = location.pathname.startsWith(BASE.pathname) ? location.pathname.slice(BASE.pathname.length) : "";
  const segments = path.split("/").filter(Boolean);
  try {
    return segments.map(decodeURIComponent);
  } catch {
    return segments;
  }
}

/**
 * The view's state (filters, a page cursor) lives in the URL's fragment (``#status=failed``): it is
 * the page's own, never sent to the server (whose routes refuse query parameters they do not declare).
 */
export function currentQuery() {
  return new URLSearchParams(location.hash.slice(1));
}

/** A URL under the base, with view state in its fragment: ``pageUrl("", {status: "failed"})``. */
export function pageUrl(path, params) {
  const url = new URL(path, BASE);
  const state = new URLSearchParams();
  for (const [key, value] of Object.entries(params || {})) {
    if (value !== undefined && value !== null && value !== "") state.set(key, String(value));
  }
  url.hash = state.toString();
  return url;
}

export function onRouteChange(listener) {
  listeners.push(listener);
}

/** Go to a page URL without reloading; ``replace`` keeps the history entry (a filter change). */
export function navigate(url, { replace = false } = {}) {
  const target = new URL(url, BASE);
  if (replace) history.replaceState(null, "", target);
  else history.pushState(null, "", target);
  for (const listener of listeners) listener({ focus: !replace });
}

/** Links under the base are routed here; others (and modified clicks) are left to the browser. */
export function routeLinks(root) {
  root.addEventListener("click", (event) => {
    if (event.defaultPrevented || event.button !== 0 || event.metaKey || event.ctrlKey || event.shiftKey || event.altKey)
      return;
    const link = event.target.closest("a[href]");
    if (!link || link.target || link.hasAttribute("download")) return;
    const skip = link.dataset.skipTo && document.getElementById(link.dataset.skipTo);
    if (skip) {
      event.preventDefault(); // "#main" would resolve against <base>, i.e. to another page
      skip.focus();
      return;
    }
    const url = new URL(link.href);
    if (url.origin !== BASE.origin || !(url.pathname + "/").startsWith(BASE.pathname)) return;
    event.preventDefault();
    if (url.href !== location.href) navigate(url);
  });
  window.addEventListener("popstate", () => {
    for (const listener of listeners) listener({ focus: true });
  });
}
