// One run: status, args (secrets come masked from the server), revision, policy decisions, timings,
// every step's output live (resumed without gap or duplicate after a drop), the run's outputs once it
// has ended (masked by the server like its args) and a Cancel button.

import { api } from "./api.js";
import { artifactsPanel } from "./artifacts.js";
import {
  announce,
  errorBox,
  formatDuration,
  h,
  replace,
  secondsBetween,
  statusBadge,
  timeElement,
  verdictBadge,
} from "./dom.js";
import { LogView, NOTE, STDERR, STDOUT } from "./log.js";
import { liveIndicator } from "./runs.js";
import { LiveStream } from "./stream.js";

const ACTIVE = new Set(["awaiting_approval", "queued", "running"]);
const QUEUE_REFRESH_MS = 2000; // how often a waiting run's place in line is read again

function headers(names) {
  return names.map((name) => h("th", { scope: "col" }, name));
}

function rank(status) {
  return status === "queued" || status === "awaiting_approval" ? 0 : status === "running" ? 1 : 2;
}

export function runView({ route, can }) {
  const runId = route[1];
  let run = null;
  let stream = null;
  let destroyed = false;
  let cancelRequested = false;
  const steps = new Map(); // step name -> {index, kind, status, exit_code, duration}

  const live = liveIndicator();
  const heading = h("h1", { id: "run-title" }, "Run");
  const badge = h("span", { class: "run-status", "aria-live": "polite" });
  const actions = h("div", { class: "actions" });
  const notice = h("div", { class: "notice-area", "aria-live": "polite" });
  const summary = h("dl", { class: "summary" });
  const argsBody = h("tbody");
  const decisionsBody = h("tbody");
  const stepsBody = h("tbody");
  const log = new LogView(`Output of run ${runId}`);
  const outputsBody = h("tbody");
  const outputsPart = h(
    "div",
    { id: "run-outputs", hidden: true },
    h("h2", { id: "outputs-title" }, "Outputs"),
    h(
      "div",
      { class: "table-wrap" },
      h("table", { class: "outputs", "aria-labelledby": "outputs-title" }, h("thead", {}, h("tr", {}, headers(["Key", "Value"]))), outputsBody),
    ),
  );
  const artifacts = artifactsPanel(runId);
  // The run's outputs, artifacts and approvals render in this section; hidden while it has none.
  const extras = h(
    "section",
    { id: "run-extras", class: "card", hidden: true, "aria-label": "Outputs, artifacts and approvals" },
    outputsPart,
    artifacts.element,
  );
  const element = h(
    "article",
    { class: "view run-view", "aria-labelledby": "run-title" },
    h("p", { class: "crumbs" }, h("a", { href: "./" }, "Runs"), " / ", h("span", { class: "mono" }, runId)),
    h("div", { class: "title-row" }, heading, badge, live.element),
    actions,
    notice,
    h("section", { class: "card", "aria-labelledby": "summary-title" }, h("h2", { id: "summary-title" }, "Summary"), summary),
    h("section", { class: "card", "aria-labelledby": "log-title" }, h("h2", { id: "log-title" }, "Output"), log.element),
    h(
      "div",
      { class: "columns" },
      h(
        "section",
        { class: "card", "aria-labelledby": "args-title" },
        h("h2", { id: "args-title" }, "Arguments"),
        h(
          "div",
          { class: "table-wrap" },
          h("table", { class: "args" }, h("thead", {}, h("tr", {}, headers(["Name", "Value"]))), argsBody),
        ),
      ),
      h(
        "section",
        { class: "card", "aria-labelledby": "decisions-title" },
        h("h2", { id: "decisions-title" }, "Policy decisions"),
        h(
          "div",
          { class: "table-wrap" },
          h(
            "table",
            { class: "decisions", id: "run-decisions" },
            h("thead", {}, h("tr", {}, headers(["Check", "Verdict", "Reason"]))),
            decisionsBody,
          ),
        ),
      ),
    ),
    h(
      "section",
      { class: "card", "aria-labelledby": "steps-title" },
      h("h2", { id: "steps-title" }, "Steps"),
      h(
        "div",
        { class: "table-wrap" },
        h(
          "table",
          { class: "steps" },
          h("thead", {}, h("tr", {}, headers(["Step", "Kind", "Status", "Exit code", "Duration"]))),
          stepsBody,
        ),
      ),
    ),
    extras,
  );
  document.title = `Run ${runId} · flwd`;

  function item(term, ...value) {
    return [h("dt", {}, term), h("dd", {}, ...value)];
  }

  function renderRun() {
    heading.textContent = `Run of ${run.job}`;
    document.title = `${run.job} ${run.status} · flwd`;
    replace(badge, statusBadge(run.status));
    element.dataset.status = run.status;
    const started = run.started_at;
    const duration = run.finished_at ? secondsBetween(started || run.created_at, run.finished_at) : null;
    const jobRef = `${run.source}:${run.job}`;
    replace(
      summary,
      item("Run", h("span", { class: "mono" }, run.id)),
      item("Job", can("jobs:read") ? h("a", { href: `jobs/${encodeURIComponent(jobRef)}` }, run.job) : run.job),
      item("Source", run.source),
      item("Revision", h("span", { class: "mono" }, run.revision || "")),
      item("Profile", run.profile),
      item("Submitted by", run.submitted_by),
      item("Submitted", timeElement(run.created_at)),
      item("Started", timeElement(started)),
      item("Finished", timeElement(run.finished_at)),
      item("Duration", formatDuration(duration)),
      run.exit_code !== null && run.exit_code !== undefined ? item("Exit code", String(run.exit_code)) : null,
      run.reason ? item("Reason", run.reason) : null,
      waits() ? item("Waiting", h("span", { id: "run-queue" }, queueText(run.queue))) : null,
      item("Plan", h("span", { class: "mono digest" }, run.plan_digest || "")),
    );
    replace(
      argsBody,
      Object.entries(run.args || {}).map(([name, value]) =>
        h("tr", {}, h("th", { scope: "row" }, name), h("td", { class: "mono" }, typeof value === "string" ? value : JSON.stringify(value))),
      ),
    );
    if (!Object.keys(run.args || {}).length) replace(argsBody, h("tr", {}, h("td", { colspan: "2" }, "No arguments.")));
    renderOutputs();
    renderActions();
    watchQueue();
  }

  // Where a waiting run stands: other runs move it up, and their events are not on this run's
  // stream, so the record is read again while it waits (see watchQueue).
  function queueText(queue) {
    return queue.position ? `#${queue.position} in line: ${queue.reason}` : queue.reason;
  }

  function waits() {
    return Boolean(run && run.queue && rank(run.status) === 0); // a started run's stale record says nothing
  }

  let queueTimer = null;
  function watchQueue() {
    const waiting = waits() && !destroyed;
    if (waiting && !queueTimer) queueTimer = setInterval(refresh, QUEUE_REFRESH_MS);
    if (!waiting && queueTimer) {
      clearInterval(queueTimer);
      queueTimer = null;
    }
  }

  function renderOutputs() {
    // Text nodes only (h() never parses markup); typed outputs (numbers, booleans) as JSON.
    const outputs = Object.entries(run.outputs || {});
    replace(
      outputsBody,
      outputs.map(([key, value]) =>
        h(
          "tr",
          { dataset: { key } },
          h("th", { scope: "row", class: "mono" }, key),
          h("td", { class: "mono output-value" }, typeof value === "string" ? value : JSON.stringify(value)),
        ),
      ),
    );
    outputsPart.hidden = outputs.length === 0;
    extras.hidden = outputsPart.hidden && artifacts.element.hidden;
  }

  // A run awaiting approval: approve exactly its plan digest (shown above), or deny it with a reason.
  function approvalControls() {
    if (!run || run.status !== "awaiting_approval" || !can("runs:approve", run.source, run.job)) return [];
    const approve = h("button", { type: "button", id: "approve-run" }, "Approve this plan");
    const reason = h("input", { type: "text", id: "deny-reason", "aria-label": "Reason to deny", placeholder: "Reason to deny" });
    const deny = h("button", { type: "button", class: "danger", id: "deny-run" }, "Deny");
    const decide = async (path, body, done, failed) => {
      approve.disabled = deny.disabled = true;
      try {
        const answer = await api("POST", `runs/${encodeURIComponent(runId)}/${path}`, { body });
        run = answer.run;
        announce(done);
        renderRun();
      } catch (error) {
        approve.disabled = deny.disabled = false;
        replace(notice, errorBox(error, failed));
      }
    };
    approve.addEventListener("click", () =>
      decide("approve", { digest: run.plan_digest }, "Approved", "Could not approve the run"),
    );
    deny.addEventListener("click", () => {
      if (!reason.value.trim()) {
        reason.focus();
        return;
      }
      decide("deny", { reason: reason.value.trim() }, "Denied", "Could not deny the run");
    });
    return [approve, reason, deny];
  }

  function renderActions() {
    replace(actions);
    actions.append(...approvalControls());
    if (!run || !can("runs:write", run.source, run.job) || !ACTIVE.has(run.status)) return;
    const button = h("button", { type: "button", class: "danger", id: "cancel-run" }, cancelRequested ? "Cancelling…" : "Cancel run");
    button.disabled = cancelRequested;
    button.addEventListener("click", async () => {
      button.disabled = true;
      try {
        await api("POST", `runs/${encodeURIComponent(runId)}/cancel`);
        cancelRequested = true;
        button.textContent = "Cancelling…";
        announce("Cancel requested");
      } catch (error) {
        button.disabled = false;
        replace(notice, errorBox(error, "Could not cancel the run"));
      }
    });
    actions.append(button);
  }

  function renderSteps() {
    replace(
      stepsBody,
      [...steps.entries()].map(([name, step]) =>
        h(
          "tr",
          {},
          h("th", { scope: "row" }, name),
          h("td", {}, step.kind || ""),
          h("td", {}, statusBadge(step.status)),
          h("td", {}, step.exit_code === undefined || step.exit_code === null ? "" : String(step.exit_code)),
          h("td", {}, formatDuration(step.duration)),
        ),
      ),
    );
  }

  function addDecision(check, outcome, reason) {
    decisionsBody.append(
      h("tr", { dataset: { check } }, h("th", { scope: "row" }, check), h("td", {}, verdictBadge(outcome)), h("td", {}, reason)),
    );
  }

  function onEvent(event) {
    const data = event.data || {};
    switch (event.type) {
      case "step.output":
        log.push(data.line, data.stream === "stderr" ? STDERR : STDOUT);
        return;
      case "policy.decision":
        addDecision(data.check, data.outcome, data.reason);
        return;
      case "policy.profile_downgrade":
        addDecision("profile-downgrade", data.outcome || "warn", data.reason || `profile ${data.profile || ""}`);
        return;
      case "step.started":
        steps.set(data.step, { index: data.index, kind: data.kind, status: "running" });
        log.push(`step ${data.step} started`, NOTE);
        renderSteps();
        return;
      case "step.finished":
        steps.set(data.step, { ...(steps.get(data.step) || {}), ...data });
        const exit = data.exit_code === undefined || data.exit_code === null ? "" : ` (exit ${data.exit_code})`;
        log.push(`step ${data.step} ${data.status}${exit}`, NOTE);
        renderSteps();
        return;
      case "run.started":
        if (run && rank(run.status) < 1) {
          run.status = "running";
          run.started_at = event.time;
          renderRun();
        }
        return;
      case "run.approved":
        refresh(); // the last approval queues the run (or rejects it): the record says which
        return;
      case "run.cancel_requested":
        cancelRequested = true;
        renderActions();
        return;
      case "run.finished":
        if (run && rank(run.status) < 2) {
          run.status = data.status;
          run.finished_at = event.time;
          if (data.exit_code !== undefined) run.exit_code = data.exit_code;
          if (data.reason) run.reason = data.reason;
          renderRun();
        }
        announce(`Run ${data.status}`);
        refresh(); // the server's record has every field (reason, exit code) as stored
        return;
      default:
    }
  }

  async function refresh() {
    try {
      const answer = await api("GET", `runs/${encodeURIComponent(runId)}`);
      if (destroyed) return;
      if (!run || rank(answer.run.status) >= rank(run.status)) run = answer.run;
      renderRun();
      if (rank(run.status) === 2 && (await artifacts.load()) && !destroyed) extras.hidden = false; // collected at the end
    } catch (error) {
      if (!destroyed && !run) replace(element, errorBox(error, "Could not load the run"));
    }
  }

  refresh().then(() => {
    if (destroyed || !run) return;
    stream = new LiveStream("run", `runs/${encodeURIComponent(runId)}/events`, {
      run: runId,
      onEvent,
      onState: live.set,
      endsWith: "run.finished",
    }).start();
  });

  return {
    element,
    destroy() {
      destroyed = true;
      if (stream) stream.stop();
      if (queueTimer) clearInterval(queueTimer);
      log.destroy();
    },
  };
}
