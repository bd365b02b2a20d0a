// Jobs: the list, and a job's page with a form built from its argument schema, a Plan button that
// shows the plan, and a Run button that submits exactly that plan (its digest).

import { ApiError, api } from "./api.js";
import { announce, errorBox, h, problemMessage, replace, verdictBadge } from "./dom.js";
import { pageUrl } from "./router.js";

const PROFILES = ["secure", "permissive", "disabled"];

export function jobRef(job) {
  return `${job.source}:${job.name}`;
}

export function jobsView() {
  const body = h("div", {}, h("p", { class: "loading" }, "Loading jobs…"));
  const element = h("section", { class: "view", "aria-labelledby": "jobs-title" }, h("h1", { id: "jobs-title" }, "Jobs"), body);
  document.title = "Jobs · flwd";
  api("GET", "jobs")
    .then(({ jobs }) => {
      if (!jobs.length) {
        replace(body, h("p", {}, "No jobs: add a source that has a jobs/ folder."));
        return;
      }
      replace(
        body,
        h(
          "div",
          { class: "table-wrap" },
          h(
            "table",
            { class: "jobs", id: "jobs-table" },
            h("thead", {}, h("tr", {}, ["Job", "Source", "Description", "Arguments"].map((t) => h("th", { scope: "col" }, t)))),
            h(
              "tbody",
              {},
              jobs.map((job) =>
                h(
                  "tr",
                  { dataset: { job: jobRef(job) } },
                  h("td", { dataset: { label: "Job" } }, h("a", { href: `jobs/${encodeURIComponent(jobRef(job))}` }, job.name)),
                  h("td", { dataset: { label: "Source" } }, job.source),
                  h("td", { dataset: { label: "Description" } }, job.description || ""),
                  h("td", { dataset: { label: "Arguments" } }, Object.keys(job.args || {}).join(", ")),
                ),
              ),
            ),
          ),
        ),
      );
    })
    .catch((error) => replace(body, errorBox(error, "Could not load the jobs")));
  return { element };
}

/** One form control for one argument: its type, bounds, pattern and choices become browser hints. */
function argField(name, spec) {
  const id = `arg-${name}`;
  const hintId = `${id}-hint`;
  const errorId = `${id}-error`;
  const describedBy = `${hintId} ${errorId}`;
  const common = { id, name, "aria-describedby": describedBy, required: spec.required && spec.type !== "boolean" };
  let control;
  if (spec.choices) {
    control = h(
      "select",
      common,
      spec.required && spec.default === undefined ? h("option", { value: "" }, "Choose…") : null,
      !spec.required && spec.default === undefined ? h("option", { value: "" }, "(none)") : null,
      spec.choices.map((choice) => h("option", { value: JSON.stringify(choice), selected: choice === spec.default }, String(choice))),
    );
  } else if (spec.type === "boolean") {
    control = h("input", { ...common, type: "checkbox", checked: spec.default === true });
  } else if (spec.type === "integer" || spec.type === "number") {
    control = h("input", {
      ...common,
      type: "text",
      inputmode: spec.type === "integer" ? "numeric" : "decimal",
      value: spec.default === undefined ? "" : String(spec.default),
      autocomplete: "off",
    });
  } else {
    control = h("input", {
      ...common,
      type: spec.secret ? "password" : "text",
      value: spec.default === undefined || spec.secret ? "" : String(spec.default),
      autocomplete: spec.secret ? "new-password" : "off",
      spellcheck: "false",
    });
  }
  const rules = [spec.type];
  if (spec.required) rules.push("required");
  if (spec.minimum !== undefined) rules.push(`≥ ${spec.minimum}`);
  if (spec.maximum !== undefined) rules.push(`≤ ${spec.maximum}`);
  if (spec.pattern) rules.push(`pattern ${spec.pattern}`);
  if (spec.default !== undefined && !spec.secret) rules.push(`default ${JSON.stringify(spec.default)}`);
  if (spec.secret) rules.push("secret");
  const error = h("p", { id: errorId, class: "field-error", "aria-live": "polite" });
  const field = h(
    "div",
    { class: `field arg arg-${spec.type === "boolean" ? "check" : "text"}`, dataset: { arg: name } },
    h("label", { for: id }, name, spec.required ? h("span", { class: "required", "aria-hidden": "true" }, " *") : null),
    control,
    h("p", { id: hintId, class: "hint" }, spec.description ? `${spec.description} (${rules.join(", ")})` : rules.join(", ")),
    error,
  );
  return { name, spec, control, error, field };
}

/** The value to send, or undefined to leave the argument out (the server fills its default). */
function fieldValue({ spec, control }) {
  if (spec.type === "boolean" && !spec.choices) return control.checked;
  const raw = control.value;
  if (raw === "") return undefined;
  if (spec.choices) return JSON.parse(raw);
  return raw; // numbers go as typed: the server parses them and names what is wrong
}

/** The browser's opinion, shown as a hint; the server's answer is what counts. */
function localHint({ spec }, value) {
  if (value === undefined) return spec.required ? "required" : "";
  if (spec.type === "integer" && !/^-?\d+$/.test(value)) return "expected an integer";
  if (spec.type === "number" && !/^-?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$/.test(value)) return "expected a number";
  if (spec.type === "integer" || spec.type === "number") {
    if (spec.minimum !== undefined && Number(value) < spec.minimum) return `must be at least ${spec.minimum}`;
    if (spec.maximum !== undefined && Number(value) > spec.maximum) return `must be at most ${spec.maximum}`;
  }
  if (spec.type === "string" && spec.pattern && !spec.choices) {
    try {
      if (!new RegExp(spec.pattern, "u").test(value)) return `does not match the pattern ${spec.pattern}`;
    } catch {
      return ""; // a Python pattern JavaScript cannot read: the server checks it
    }
  }
  return "";
}

export function jobView({ route, can, navigate }) {
  const ref = route[1];
  const body = h("div", {}, h("p", { class: "loading" }, "Loading the job…"));
  const heading = h("h1", { id: "job-title" }, ref);
  const element = h(
    "article",
    { class: "view job-view", "aria-labelledby": "job-title" },
    h("p", { class: "crumbs" }, h("a", { href: "jobs" }, "Jobs"), " / ", ref),
    heading,
    body,
  );
  document.title = `${ref} · flwd`;
  api("GET", `jobs/${encodeURIComponent(ref)}`)
    .then(({ job }) => {
      heading.textContent = job.name;
      replace(body, jobForm(job, can, navigate));
    })
    .catch((error) => replace(body, errorBox(error, "Could not load the job")));
  return { element };
}

function jobForm(job, can, navigate) {
  const fields = Object.entries(job.args || {}).map(([name, spec]) => argField(name, spec));
  const profile = h(
    "select",
    { id: "plan-profile", name: "profile", "aria-describedby": "plan-profile-hint" },
    h("option", { value: "" }, "The server's default"),
    PROFILES.map((p) => h("option", { value: p }, p)),
  );
  const formError = h("div", { class: "form-error", "aria-live": "assertive" });
  const planButton = h("button", { type: "submit", id: "plan-button" }, "Plan");
  const planArea = h("section", { class: "plan-area", "aria-live": "polite", "aria-label": "Plan" });
  let planned = null; // {body, plan}: what Run submits

  const form = h(
    "form",
    { class: "card job-form", novalidate: true, "aria-label": `Arguments of ${job.name}` },
    job.description ? h("p", { class: "description" }, job.description) : null,
    fields.length ? fields.map((f) => f.field) : h("p", {}, "This job takes no arguments."),
    h(
      "div",
      { class: "field" },
      h("label", { for: "plan-profile" }, "Profile"),
      profile,
      h("p", { id: "plan-profile-hint", class: "hint" }, "A profile less strict than the server's needs the runs:downgrade scope."),
    ),
    formError,
    h("div", { class: "actions" }, planButton),
  );

  function body() {
    const args = {};
    for (const field of fields) {
      const value = fieldValue(field);
      if (value !== undefined) args[field.name] = value;
    }
    const out = { job: jobRef(job), args };
    if (profile.value) out.profile = profile.value;
    return out;
  }

  function showErrors(error) {
    const byField = error instanceof ApiError ? error.fieldErrors() : {};
    const leftover = [];
    for (const [key, text] of Object.entries(byField)) {
      const field = fields.find((f) => key === `args.${f.name}`);
      if (field) {
        field.error.textContent = text;
        field.error.classList.remove("local");
        field.control.setAttribute("aria-invalid", "true");
      } else {
        leftover.push(`${key}: ${text}`);
      }
    }
    replace(
      formError,
      h("p", { class: "error", role: "alert" }, problemMessage(error)),
      leftover.length ? h("ul", {}, leftover.map((t) => h("li", {}, t))) : null,
    );
  }

  function clearErrors() {
    replace(formError);
    for (const field of fields) {
      field.control.removeAttribute("aria-invalid");
      field.error.textContent = localHint(field, fieldValue(field) === undefined ? undefined : field.control.value);
      field.error.classList.toggle("local", Boolean(field.error.textContent));
    }
  }

  // Editing the form makes the shown plan stale: Run would submit something else than what was shown.
  form.addEventListener("input", () => {
    if (planned) {
      planned = null;
      replace(planArea, h("p", { class: "notice" }, "The arguments changed: plan again to run."));
    }
  });

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    clearErrors();
    planButton.disabled = true;
    const request = body();
    try {
      const { plan } = await api("POST", "plans", { body: request });
      planned = { body: request, plan };
      replace(planArea, planSection(plan, can, run));
      planArea.querySelector("h2").focus(); // keyboard and screen-reader users land on the plan
      announce(plan.runnable ? "Planned: runnable" : "Planned: denied by policy");
    } catch (error) {
      planned = null;
      replace(planArea);
      showErrors(error);
    } finally {
      planButton.disabled = false;
    }
  });

  async function run(button) {
    if (!planned) return;
    button.disabled = true;
    try {
      const { run: created } = await api("POST", "runs", { body: { ...planned.body, plan: planned.plan.digest } });
      announce("Run submitted");
      navigate(pageUrl(`runs/${encodeURIComponent(created.id)}`));
    } catch (error) {
      button.disabled = false;
      if (error.status === 409 && /plan-changed/.test(error.problem.type || "")) {
        planned = null;
        replace(
          planArea,
          h("p", { class: "error", role: "alert", id: "plan-changed" }, "The job changed since planned: plan again to see what would run now."),
        );
      } else {
        showErrors(error);
      }
    }
  }

  return h("div", {}, form, planArea);
}

function planSection(plan, can, run) {
  const runButton = can("runs:write", plan.source, plan.job)
    ? h("button", { type: "button", id: "run-button", class: "primary", disabled: !plan.runnable }, "Run this plan")
    : null;
  if (runButton) runButton.addEventListener("click", () => run(runButton));
  return h(
    "div",
    { class: "card plan", id: "plan", dataset: { runnable: String(plan.runnable), digest: plan.digest } },
    h("h2", { tabindex: "-1" }, "Plan"),
    h(
      "p",
      { class: plan.runnable ? "verdict-line ok" : "verdict-line denied" },
      plan.runnable ? "Runnable: every check allows it." : "Not runnable: the policy denies it.",
    ),
    h(
      "dl",
      { class: "summary" },
      h("dt", {}, "Job"),
      h("dd", {}, `${plan.source}:${plan.job}`),
      h("dt", {}, "Profile"),
      h("dd", {}, plan.profile),
      h("dt", {}, "Revision"),
      h("dd", { class: "mono" }, plan.revision || ""),
      h("dt", {}, "Arguments"),
      h("dd", { class: "mono" }, JSON.stringify(plan.args)),
      h("dt", {}, "Digest"),
      h("dd", { class: "mono digest", id: "plan-digest" }, plan.digest),
    ),
    h("h3", {}, "Steps"),
    h(
      "ol",
      { class: "plan-steps" },
      plan.steps.map((step) =>
        h("li", {}, h("strong", {}, step.name), ` (${step.kind}) `, h("code", {}, step.run || [step.image, ...(step.command || [])].join(" "))),
      ),
    ),
    h("h3", {}, "Policy decisions"),
    h(
      "div",
      { class: "table-wrap" },
      h(
        "table",
        { class: "decisions", id: "plan-decisions" },
        h("thead", {}, h("tr", {}, ["Check", "Verdict", "Reason"].map((t) => h("th", { scope: "col" }, t)))),
        h(
          "tbody",
          {},
          plan.decisions.map((d) =>
            h(
              "tr",
              { dataset: { check: d.check, outcome: d.outcome } },
              h("th", { scope: "row" }, d.check),
              h("td", {}, verdictBadge(d.outcome)),
              h("td", {}, d.reason),
            ),
          ),
        ),
      ),
    ),
    runButton ? h("div", { class: "actions" }, runButton) : h("p", { class: "hint" }, "Your token cannot start runs (runs:write)."),
  );
}
