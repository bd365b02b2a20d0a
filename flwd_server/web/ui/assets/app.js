// The dashboard: sign-in, the header, and the route -> view table. Each view is a function
// (context) -> {element, destroy}; destroy closes the view's streams and timers.

import { api, onUnauthorized, session } from "./api.js";
import { announce, errorBox, h, replace } from "./dom.js";
import { jobsView, jobView } from "./jobs.js";
import { runView } from "./run.js";
import { runsView } from "./runs.js";
import { currentQuery, currentRoute, navigate, onRouteChange, routeLinks } from "./router.js";
import { sourcesView } from "./sources.js";

const main = document.getElementById("main");
const nav = document.getElementById("nav");
const who = document.getElementById("who");
const DEV = document.querySelector('meta[name="flwd-dev"]')?.getAttribute("content") === "true";

let me = null; // {subject, scopes: Set, dev}
let view = null;

// "*" in a narrowed scope's SOURCE or JOB part matches any run of characters within that part.
function globMatches(pattern, value) {
  const escaped = pattern.split("*").map((part) => part.replace(/[.+?^${}()|[\]\\]/g, "\\$&"));
  return new RegExp(`^${escaped.join(".*")}$`).test(value);
}

// A scope narrowed to jobs (runs:write:SOURCE:JOB) opens the same views; asked about one job
// (source and name given), only a scope that names it counts, so no button is offered that the
// server would refuse.
function can(scope, source, job) {
  if (!me) return false;
  if (me.scopes.has(scope)) return true;
  return [...me.scopes].some((held) => {
    if (!held.startsWith(scope + ":")) return false;
    if (source === undefined) return true;
    const [sourcePattern, jobPattern] = held.slice(scope.length + 1).split(":");
    return globMatches(sourcePattern, source) && globMatches(jobPattern ?? "", job);
  });
}

const ROUTES = [
  { match: (r) => r.length === 0, view: runsView, nav: "runs", scope: "runs:read" },
  { match: (r) => r.length === 2 && r[0] === "runs", view: runView, nav: "runs", scope: "runs:read" },
  { match: (r) => r.length === 1 && r[0] === "jobs", view: jobsView, nav: "jobs", scope: "jobs:read" },
  { match: (r) => r.length === 2 && r[0] === "jobs", view: jobView, nav: "jobs", scope: "jobs:read" },
  { match: (r) => r.length === 1 && r[0] === "sources", view: sourcesView, nav: "sources", scope: "sources:read" },
];

function closeView() {
  if (view && view.destroy) view.destroy();
  view = null;
}

function render({ focus = false } = {}) {
  closeView();
  if (!me) return;
  const route = currentRoute();
  const entry = ROUTES.find((r) => r.match(route));
  for (const link of nav.querySelectorAll("a[data-nav]")) {
    if (entry && link.dataset.nav === entry.nav) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  if (!entry) {
    document.title = "Not found · flwd";
    replace(main, h("h1", {}, "Not found"), h("p", {}, "No page here. ", h("a", { href: "./" }, "See the runs.")));
  } else if (!can(entry.scope)) {
    document.title = "Not allowed · flwd";
    replace(main, h("h1", {}, "Not allowed"), h("p", {}, `Your token does not hold the scope ${entry.scope}.`));
  } else {
    view = entry.view({ route, query: currentQuery(), can, me, navigate });
    replace(main, view.element);
  }
  if (focus) main.focus();
}

function showSignedIn() {
  nav.hidden = false;
  who.hidden = false;
  for (const link of nav.querySelectorAll("a[data-nav]")) {
    const needs = { runs: "runs:read", jobs: "jobs:read", sources: "sources:read" }[link.dataset.nav];
    link.parentElement.hidden = !can(needs);
  }
  document.getElementById("subject").textContent = me.subject;
  render();
}

function signOut(message) {
  closeView();
  session.forget();
  me = null;
  signInForm(message);
  announce("Signed out");
}

function signInForm(message) {
  nav.hidden = true;
  who.hidden = true;
  document.title = "Sign in · flwd";
  const input = h("input", {
    type: "password",
    name: "token",
    id: "token",
    required: true,
    autocomplete: "off",
    spellcheck: "false",
    "aria-describedby": "token-help",
  });
  const problem = h("div", { class: "form-error", "aria-live": "assertive" });
  const button = h("button", { type: "submit" }, "Sign in");
  const form = h(
    "form",
    { method: "post", class: "card signin", "aria-labelledby": "signin-title" },
    h("h1", { id: "signin-title" }, "Sign in"),
    message ? h("p", { class: "notice" }, message) : null,
    h("label", { for: "token" }, "Bearer token"),
    input,
    h(
      "p",
      { id: "token-help", class: "hint" },
      "A JWT issued for this server. It is kept in this tab only and forgotten when you sign out or close the tab.",
    ),
    DEV
      ? h("p", { class: "dev-hint" }, "This server runs with --dev: the token ", h("code", {}, "dev-token"), " works.")
      : null,
    problem,
    button,
  );
  form.addEventListener("submit", async (event) => {
    event.preventDefault(); // never sent to the server as a form: the token goes in a header only
    const token = input.value.trim();
    if (!token) return;
    button.disabled = true;
    replace(problem);
    try {
      const answer = await api("GET", "auth/me", { token });
      session.token = token;
      input.value = "";
      me = { subject: answer.subject, scopes: new Set(answer.scopes || []), dev: Boolean(answer.dev) };
      announce(`Signed in as ${me.subject}`);
      showSignedIn();
      main.focus();
    } catch (error) {
      replace(problem, errorBox(error, "This token was not accepted"));
      button.disabled = false;
      input.focus();
    }
  });
  replace(main, form);
  input.focus();
}

async function start() {
  routeLinks(document.body);
  onRouteChange(render);
  onUnauthorized(() => signOut("The server no longer accepts your token: sign in again."));
  document.getElementById("sign-out").addEventListener("click", () => signOut());
  if (!session.token) {
    signInForm();
    return;
  }
  try {
    const answer = await api("GET", "auth/me");
    me = { subject: answer.subject, scopes: new Set(answer.scopes || []), dev: Boolean(answer.dev) };
    showSignedIn();
  } catch (error) {
    if (error.status === 401) return; // onUnauthorized shows the form
    replace(
      main,
      h("h1", {}, "flwd"),
      errorBox(error, "The server did not answer"),
      h("button", { type: "button", onclick: () => location.reload() }, "Try again"),
    );
  }
}

start();
