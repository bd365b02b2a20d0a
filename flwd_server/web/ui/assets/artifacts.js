// A run's artifacts on its page: path, size and a download link per file. Downloads need the bearer
// token, so a click fetches the file with Authorization and saves it through a Blob URL; every name is text.

import { ApiError, api, apiUrl, session } from "./api.js";
import { errorBox, h, replace } from "./dom.js";

const UNITS = ["B", "KiB", "MiB", "GiB"];

/** 1536 -> "1.5 KiB". */
export function formatSize(bytes) {
  let value = Number(bytes) || 0;
  let unit = 0;
  while (value >= 1024 && unit < UNITS.length - 1) {
    value /= 1024;
    unit += 1;
  }
  return unit === 0 ? `${value} B` : `${value.toFixed(1)} ${UNITS[unit]}`;
}

/** The artifact's URL under the API root (each path segment encoded; the server looks the path up). */
function artifactPath(runId, path) {
  return `runs/${encodeURIComponent(runId)}/artifacts/${path.split("/").map(encodeURIComponent).join("/")}`;
}

async function download(runId, artifact, notice) {
  try {
    const response = await fetch(apiUrl(artifactPath(runId, artifact.path)), {
      headers: { Authorization: `Bearer ${session.token}` },
      cache: "no-store",
      credentials: "omit",
      referrerPolicy: "no-referrer",
    });
    if (!response.ok) {
      const problem = await response.json().catch(() => null);
      throw new ApiError(response.status, problem || { title: `HTTP ${response.status}` });
    }
    const url = URL.createObjectURL(await response.blob());
    const link = h("a", { href: url, download: artifact.path.split("/").pop() || "artifact", hidden: true });
    document.body.append(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(url), 60_000);
  } catch (error) {
    replace(notice, errorBox(error, `Could not download ${artifact.path}`));
  }
}

/** The panel: ``element`` goes in the run page's extras; ``load()`` fills it (hidden while a run has none). */
export function artifactsPanel(runId) {
  const body = h("tbody");
  const notice = h("div", { class: "notice-area", "aria-live": "polite" });
  const element = h(
    "section",
    { id: "run-artifacts", "aria-labelledby": "artifacts-title", hidden: true },
    h("h2", { id: "artifacts-title" }, "Artifacts"),
    notice,
    h(
      "div",
      { class: "table-wrap" },
      h(
        "table",
        { class: "artifacts" },
        h("thead", {}, h("tr", {}, ["Path", "Size", "SHA-256"].map((name) => h("th", { scope: "col" }, name)))),
        body,
      ),
    ),
  );

  function row(artifact) {
    const link = h("a", { href: apiUrl(artifactPath(runId, artifact.path)).href, class: "mono" }, artifact.path);
    link.addEventListener("click", (event) => {
      event.preventDefault();
      download(runId, artifact, notice);
    });
    return h(
      "tr",
      { dataset: { path: artifact.path } },
      h("th", { scope: "row" }, link),
      h("td", { "data-label": "Size" }, formatSize(artifact.size)),
      h("td", { "data-label": "SHA-256", class: "mono digest" }, artifact.sha256),
    );
  }

  let shown = null; // what the table shows: the same list is not drawn again (a focused link keeps its focus)

  async function load() {
    try {
      const answer = await api("GET", `runs/${encodeURIComponent(runId)}/artifacts`);
      const artifacts = answer.artifacts || [];
      const key = JSON.stringify(artifacts.map((a) => [a.path, a.sha256]));
      if (key !== shown) {
        replace(body, artifacts.map(row));
        shown = key;
      }
      element.hidden = artifacts.length === 0;
    } catch (error) {
      replace(notice, errorBox(error, "Could not list the artifacts"));
      element.hidden = false;
    }
    return !element.hidden;
  }

  return { element, load };
}
