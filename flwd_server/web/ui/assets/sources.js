// Sources: each with its revision, last sync and errors, and a Sync button for sources:write.

import { api } from "./api.js";
import { announce, errorBox, h, replace, timeElement } from "./dom.js";

export function sourcesView({ can }) {
  const body = h("div", {}, h("p", { class: "loading" }, "Loading sources…"));
  const element = h(
    "section",
    { class: "view", "aria-labelledby": "sources-title" },
    h("h1", { id: "sources-title" }, "Sources"),
    body,
  );
  document.title = "Sources · flwd";

  function row(source) {
    const tr = h("tr", { dataset: { source: source.name } });
    fill(tr, source, null);
    return tr;
  }

  function fill(tr, source, outcome) {
    const described = (e) => (typeof e === "string" ? e : `${e.path || e.file || ""}: ${e.message || JSON.stringify(e)}`);
    const errors = [source.last_error, ...(source.errors || []).map(described)].filter(Boolean);
    let button = null;
    if (can("sources:write")) {
      button = h("button", { type: "button", class: "sync", "aria-label": `Sync ${source.name}` }, "Sync");
      button.addEventListener("click", async () => {
        button.disabled = true;
        button.textContent = "Syncing…";
        try {
          const answer = await api("POST", `sources/${encodeURIComponent(source.name)}/sync`);
          fill(tr, answer.source, answer.changed ? "changed" : "unchanged");
          announce(`${source.name} synced: ${answer.changed ? "changed" : "unchanged"}`);
          tr.querySelector("button.sync")?.focus();
        } catch (error) {
          fill(tr, source, error);
        }
      });
    }
    replace(
      tr,
      h("th", { scope: "row", dataset: { label: "Source" } }, source.name),
      h("td", { dataset: { label: "Type" } }, source.type, source.origin ? ` (${source.origin})` : ""),
      h("td", { dataset: { label: "Revision" }, class: "mono" }, source.revision || ""),
      h("td", { dataset: { label: "Last sync" } }, source.synced_at ? timeElement(source.synced_at) : "never"),
      h("td", { dataset: { label: "Jobs" } }, String((source.jobs || []).length)),
      h(
        "td",
        { dataset: { label: "Errors" } },
        errors.length ? h("ul", { class: "errors" }, errors.map((e) => h("li", {}, e))) : "none",
        outcome instanceof Error ? errorBox(outcome, "The sync failed") : null,
        typeof outcome === "string" ? h("p", { class: "outcome" }, outcome) : null,
      ),
      button ? h("td", { dataset: { label: "Actions" } }, button) : null,
    );
  }

  api("GET", "sources")
    .then(({ sources }) => {
      const headers = ["Source", "Type", "Revision", "Last sync", "Jobs", "Errors"];
      if (can("sources:write")) headers.push("Actions");
      replace(
        body,
        h(
          "div",
          { class: "table-wrap" },
          h(
            "table",
            { class: "sources", id: "sources-table" },
            h("thead", {}, h("tr", {}, headers.map((t) => h("th", { scope: "col" }, t)))),
            h("tbody", {}, sources.map(row)),
          ),
        ),
      );
    })
    .catch((error) => replace(body, errorBox(error, "Could not load the sources")));
  return { element };
}
