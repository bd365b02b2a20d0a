// The runs list: newest first, paginated, filtered by status/job/source, updated live from GET /events.

import { api, firstEventId } from "./api.js";
import { STATUSES, errorBox, formatDuration, h, replace, secondsBetween, statusBadge, timeElement } from "./dom.js";
import { pageUrl } from "./router.js";
import { LiveStream } from "./stream.js";

const PAGE_SIZE = 50;
const MAX_LIVE_ROWS = 500; // the first page grows as runs arrive; beyond this the oldest rows leave it
const COLUMNS = ["Job", "Source", "Status", "Submitted by", "Submitted", "Duration"];

/** How far a status is along a run's life: an event never moves a row back (a stale event after a fresh list). */
function rank(status) {
  return status === "queued" || status === "awaiting_approval" ? 0 : status === "running" ? 1 : 2;
}

export function liveIndicator() {
  const TEXT = { connecting: "Connecting…", live: "Live", reconnecting: "Reconnecting…", ended: "Complete" };
  const el = h("p", { class: "live", dataset: { state: "connecting" } }, TEXT.connecting);
  return {
    element: el,
    set(state) {
      el.dataset.state = state;
      el.textContent = TEXT[state] || state;
    },
  };
}

export function runsView({ query, navigate }) {
  const filters = { status: query.get("status") || "", job: query.get("job") || "", source: query.get("source") || "" };
  const cursor = query.get("cursor") || "";
  const rows = new Map(); // run id -> {tr, run}
  const pending = []; // events that came before the list
  let listed = false;
  let stream = null;
  let destroyed = false;

  const live = liveIndicator();
  const tbody = h("tbody");
  const table = h(
    "table",
    { class: "runs", id: "runs-table" },
    h("caption", { class: "sr-only" }, "Runs, newest first"),
    h("thead", {}, h("tr", {}, COLUMNS.map((name) => h("th", { scope: "col" }, name)))),
    tbody,
  );
  const message = h("div", { class: "list-message" }, h("p", { class: "loading" }, "Loading runs…"));
  const pager = h("nav", { class: "pager", "aria-label": "Pages of runs" });

  const statusSelect = h(
    "select",
    { id: "filter-status", name: "status" },
    h("option", { value: "" }, "Any"),
    STATUSES.map((s) => h("option", { value: s, selected: s === filters.status }, s.replaceAll("_", " "))),
  );
  const jobInput = h("input", { id: "filter-job", name: "job", type: "text", value: filters.job, autocomplete: "off" });
  const sourceInput = h("input", {
    id: "filter-source",
    name: "source",
    type: "text",
    value: filters.source,
    autocomplete: "off",
  });
  const form = h(
    "form",
    { class: "filters", role: "search", "aria-label": "Filter runs" },
    h("div", { class: "field" }, h("label", { for: "filter-status" }, "Status"), statusSelect),
    h("div", { class: "field" }, h("label", { for: "filter-job" }, "Job"), jobInput),
    h("div", { class: "field" }, h("label", { for: "filter-source" }, "Source"), sourceInput),
    h("div", { class: "field actions" }, h("button", { type: "submit" }, "Filter"), h("a", { href: "./" }, "Clear")),
  );
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    navigate(pageUrl("", { status: statusSelect.value, job: jobInput.value.trim(), source: sourceInput.value.trim() }));
  });

  const element = h(
    "section",
    { class: "view runs-view", "aria-labelledby": "runs-title" },
    h("div", { class: "title-row" }, h("h1", { id: "runs-title" }, "Runs"), live.element),
    form,
    h("div", { class: "table-wrap" }, table),
    message,
    pager,
  );
  document.title = "Runs · flwd";

  function cell(column, ...content) {
    return h("td", { dataset: { label: column } }, ...content);
  }

  function rowFor(run) {
    const tr = h("tr", { dataset: { runId: run.id, status: run.status } });
    fillRow(tr, run);
    return tr;
  }

  function fillRow(tr, run) {
    const duration = run.finished_at ? secondsBetween(run.started_at || run.created_at, run.finished_at) : null;
    replace(
      tr,
      cell("Job", h("a", { href: `runs/${encodeURIComponent(run.id)}`, title: `run ${run.id}` }, run.job)),
      cell("Source", run.source),
      cell("Status", statusBadge(run.status)),
      cell("Submitted by", run.submitted_by),
      cell("Submitted", timeElement(run.created_at)),
      cell("Duration", formatDuration(duration)),
    );
    tr.dataset.status = run.status;
  }

  function matches(run) {
    return (!filters.status || filters.status === run.status) && (!filters.job || filters.job === run.job);
  }

  function apply(event) {
    const id = event.run_id;
    const known = rows.get(id);
    if (event.type === "run.queued") {
      if (known || cursor) return; // already listed, or not the first page
      const data = event.data || {};
      const run = {
        id,
        job: data.job,
        source: data.source,
        status: "queued",
        submitted_by: data.submitted_by,
        created_at: event.time,
        started_at: null,
        finished_at: null,
      };
      if (!matches(run)) return;
      const tr = rowFor(run);
      rows.set(id, { tr, run });
      tbody.prepend(tr);
      message.hidden = true;
      while (tbody.rows.length > MAX_LIVE_ROWS) {
        const last = tbody.rows[tbody.rows.length - 1];
        rows.delete(last.dataset.runId);
        last.remove();
      }
      return;
    }
    if (!known) return;
    const run = known.run;
    if (event.type === "run.started" && rank(run.status) < 1) {
      run.status = "running";
      run.started_at = event.time;
    } else if (event.type === "run.finished" && rank(run.status) < 2) {
      run.status = event.data.status;
      run.finished_at = event.time;
      if (!run.started_at && typeof event.data.duration === "number") {
        run.started_at = new Date(Date.parse(event.time) - event.data.duration * 1000).toISOString();
      }
    } else {
      return;
    }
    fillRow(known.tr, run);
  }

  function onEvent(event) {
    if (!listed) pending.push(event);
    else apply(event);
  }

  async function load() {
    try {
      // Where the live stream starts: just after the newest run's run.queued, read before the list,
      // so a run queued while the list loads is in the list or replayed by the stream (or both).
      const newest = await api("GET", "runs", { params: { limit: 1 } });
      let after = 0;
      if (newest.runs.length) {
        const first = await firstEventId({ run: newest.runs[0].id, type: "run.queued" });
        after = first === null ? 0 : first - 1;
      }
      if (destroyed) return;
      const params = { type: "run.*", job: filters.job, source: filters.source };
      stream = new LiveStream("runs", "events", { params, after, onEvent, onState: live.set }).start();
      const page = await api("GET", "runs", { params: { ...filters, limit: PAGE_SIZE, cursor } });
      if (destroyed) return;
      for (const run of page.runs) {
        if (rows.has(run.id)) continue;
        const tr = rowFor(run);
        rows.set(run.id, { tr, run });
        tbody.append(tr);
      }
      listed = true;
      performance.mark("flwd:runs-listed"); // scripts/bench reads it: the first page of runs is in the DOM
      for (const event of pending.splice(0)) apply(event);
      if (rows.size) {
        message.hidden = true;
      } else {
        replace(message, h("p", {}, filters.status || filters.job || filters.source ? "No run matches." : "No runs yet."));
      }
      const links = [];
      if (cursor) links.push(h("a", { href: pageUrl("", { ...filters }).href }, "Newest runs"));
      if (page.next) links.push(h("a", { href: pageUrl("", { ...filters, cursor: page.next }).href }, "Older runs"));
      replace(pager, links);
    } catch (error) {
      if (destroyed) return;
      if (stream) stream.stop(); // a filter the server refuses would refuse the stream too
      replace(message, errorBox(error, "Could not load the runs"));
    }
  }

  load();
  return {
    element,
    destroy() {
      destroyed = true;
      if (stream) stream.stop();
    },
  };
}
