"""The dashboard in a real browser (headless Chromium) against a real server: sign-in, the live runs
list, a run's live output, job forms that plan and run, policy denials, cancel, sources, scopes,
escaping, the CSP, narrow screens. One browser and one server for the whole module."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
import requests

from tests.fixtures.browser import Browser
from tests.fixtures.server import ServerProcess
from tests.fixtures.tokens import JwtAuth

pytestmark = pytest.mark.integration

XSS = "<img src=x onerror=alert(1)>"
JOBS = {
    "shout.yaml": f"""name: shout
description: "Print markup as output <b>not bold</b>"
args:
  lines: {{type: integer, default: 8, minimum: 1, maximum: 100}}
steps:
  - name: print
    run: |
      echo '{XSS}'
      echo 'to stderr' >&2
      i=0; while [ "$i" -lt "$FLWD_ARG_LINES" ]; do i=$((i+1)); echo "tick $i"; sleep 0.2; done
""",
    "needs-host-env.yaml": "name: needs-host-env\ndescription: Wants the server's environment\n"
    "requires: [host-env]\nsteps:\n  - run: 'echo hi'\n",
    "deploy.yaml": """name: deploy
description: Every kind of argument
args:
  target: {type: string, choices: [staging, production], default: staging, description: Where}
  dry_run: {type: boolean, default: true}
  password: {type: string, secret: true, required: true}
  ratio: {type: number, minimum: 0, maximum: 1, default: 0.5}
steps:
  - run: 'echo "target=$FLWD_ARG_TARGET dry=$FLWD_ARG_DRY_RUN"'
""",
    "editable.yaml": "name: editable\nsteps:\n  - run: 'true'\n",
    "gated.yaml": "name: gated\napproval: {required: 1}\nsteps:\n  - run: 'echo approved-run'\n",
    "one-at-a-time.yaml": "name: one-at-a-time\nargs:\n  seconds: {type: integer, default: 60}\n"
    "concurrency: {group: solo, limit: 1}\nsteps:\n  - run: 'echo started; sleep \"$FLWD_ARG_SECONDS\"'\n",
    "report.yaml": f"""name: report
description: Sets outputs
args:
  password: {{type: string, secret: true, required: true}}
outputs:
  count: {{type: integer}}
steps:
  - run: |
      sleep 1
      echo 'markup={XSS}' >> "$FLWD_OUTPUT"
      printf 'notes<<EOF\\nfirst\\nsecond\\nEOF\\n' >> "$FLWD_OUTPUT"
      echo count=7 >> "$FLWD_OUTPUT"
      echo "url=https://u:$FLWD_ARG_PASSWORD@h/" >> "$FLWD_OUTPUT"
""",
    "artifact.yaml": f"""name: artifact
steps:
  - run: |
      printf 'hello from the run\\n' > "$FLWD_ARTIFACTS/report.txt"
      printf 'x' > "$FLWD_ARTIFACTS/{XSS}.txt"
      head -c 3072 /dev/zero > "$FLWD_ARTIFACTS/zeros.bin"
""",
}


@pytest.fixture(scope="module")
def ui(tmp_path_factory: pytest.TempPathFactory, module_jwt_auth: JwtAuth) -> Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp("ui")
    jobs = root / "ui-jobs" / "jobs"
    jobs.mkdir(parents=True)
    for name, text in JOBS.items():
        (jobs / name).write_text(text)
    config = {
        "sse": {"heartbeat": 1.0},
        "auth": module_jwt_auth.config,
        "sources": [{"type": "local", "name": "ui", "path": str(root / "ui-jobs")}],
    }
    server = ServerProcess(root, config, dev=True, env=None).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def signed_in(browser: Browser, ui: ServerProcess) -> Browser:
    browser.sign_in(f"{ui.url}/ui/")
    return browser


def row(browser: Browser, run_id: str, status: str | None = None) -> list:
    selector = f'#runs-table tr[data-run-id="{run_id}"]' + (f'[data-status="{status}"]' if status else "")
    return browser.find_all(selector)


def no_alert(browser: Browser) -> bool:
    from selenium.common.exceptions import NoAlertPresentException

    try:
        browser.driver.switch_to.alert  # noqa: B018 - raises when there is none
    except NoAlertPresentException:
        return True
    return False


def test_sign_in_says_dev_token_works_and_keeps_the_token_in_session_storage_only(browser, ui):
    browser.open(f"{ui.url}/ui/")
    browser.js("sessionStorage.clear()")
    browser.open(f"{ui.url}/ui/")
    field = browser.wait_for("form input[name=token]")
    assert field.get_attribute("type") == "password"
    assert browser.find("label[for=token]").text
    assert "dev-token" in browser.find(".dev-hint").text
    browser.screenshot("signin")
    field.send_keys("not-a-token")
    field.submit()
    browser.wait(lambda: browser.find_all(".signin .error"), message="the refusal")
    assert browser.js("return sessionStorage.length") == 0
    field.clear()
    field.send_keys("dev-token")
    field.submit()
    browser.wait(lambda: browser.find_all("#runs-table"), message="the runs list")
    assert browser.find("#subject").text == "dev"
    assert browser.js("return sessionStorage.getItem('flwd.token')") == "dev-token"
    assert browser.js("return localStorage.length") == 0
    assert browser.js("return document.cookie") == ""
    assert "dev-token" not in browser.driver.current_url
    browser.find("#sign-out").click()
    browser.wait_for("form input[name=token]")
    assert browser.js("return sessionStorage.length") == 0
    browser.sign_in(f"{ui.url}/ui/")


def test_a_run_submitted_through_the_api_appears_live_and_succeeds_without_a_reload(signed_in, ui):
    browser = signed_in
    browser.open(f"{ui.url}/ui/")
    browser.wait(lambda: (browser.stream("runs") or {}).get("state") == "live", message="the live stream")
    browser.js("window.notReloaded = true")
    run = ui.submit("ui:shout", {"lines": 3})
    browser.wait(lambda: row(browser, run["id"]), 10, "the new run's row")
    browser.wait(lambda: row(browser, run["id"], "running"), 10, "the row to show running")
    browser.wait(lambda: row(browser, run["id"], "succeeded"), 15, "the row to show succeeded")
    assert browser.js("return window.notReloaded") is True
    cells = [c.text for c in row(browser, run["id"])[0].find_elements("css selector", "td")]
    assert cells[:4] == ["shout", "ui", "succeeded", "dev"]
    # Newest first: the new run is the first row.
    assert browser.find("#runs-table tbody tr").get_attribute("data-run-id") == run["id"]


def test_a_run_page_shows_the_output_live_and_markup_as_text(signed_in, ui):
    browser = signed_in
    run = ui.submit("ui:shout", {"lines": 10})
    browser.open(f"{ui.url}/ui/runs/{run['id']}")
    log = browser.wait_for(".log")
    # Output arrives while the run is still running, not when it ends.
    browser.wait(lambda: "tick 1" in log.text and ui.run_status(run["id"]) == "running", 10, "live output")
    assert XSS in log.text
    assert log.find_elements("css selector", "img") == [] and browser.find_all("main img") == []
    assert no_alert(browser)
    err = [r.text for r in log.find_elements("css selector", ".log-row.err")]
    assert len(err) == 1 and err[0].endswith("to stderr")
    browser.wait(lambda: browser.find_all('article[data-status="succeeded"]'), 15, "the run to succeed")
    assert log.get_attribute("data-lines") == str(2 + 10 + 2)  # markup, stderr, ticks, step start and end
    decisions = {r.get_attribute("data-check") for r in browser.find_all("#run-decisions tbody tr")}
    assert "host-env" in decisions
    assert browser.find("#run-extras").get_attribute("hidden") is not None
    browser.screenshot("run")
    browser.open(f"{ui.url}/ui/jobs")
    cell = browser.wait_for('#jobs-table tr[data-job="ui:shout"] td[data-label="Description"]')
    assert cell.text == "Print markup as output <b>not bold</b>" and cell.find_elements("css selector", "b") == []


def test_a_run_page_shows_its_outputs_when_it_ends_as_text_and_masked(signed_in, ui):
    browser = signed_in
    run = ui.submit("ui:report", {"password": "hunter2-s3cret"})
    browser.open(f"{ui.url}/ui/runs/{run['id']}")  # open while it runs: the outputs come with its end
    browser.wait_for('#run-outputs tbody tr[data-key="url"]', timeout=20)
    cells = {
        r.get_attribute("data-key"): r.find_element("css selector", "td").text
        for r in browser.find_all("#run-outputs tbody tr")
    }
    assert cells == {"markup": XSS, "notes": "first\nsecond", "count": "7", "url": "https://u:***@h/"}
    assert browser.find_all("main img") == [] and no_alert(browser)
    assert browser.find("#run-extras").get_attribute("hidden") is None
    assert "s3cret" not in browser.find("main").text


def test_a_run_page_lists_its_artifacts_as_text_and_downloads_one_with_the_token(signed_in, ui):
    browser = signed_in
    run = ui.submit("ui:artifact")
    ui.wait_finished(run["id"])
    browser.open(f"{ui.url}/ui/runs/{run['id']}")
    browser.wait(lambda: browser.find_all("#run-extras:not([hidden]) #run-artifacts:not([hidden])"), 10, "artifacts")
    rows = {r.get_attribute("data-path"): r for r in browser.find_all("#run-artifacts tbody tr")}
    assert sorted(rows) == sorted([f"{XSS}.txt", "report.txt", "zeros.bin"])
    assert rows[f"{XSS}.txt"].find_element("css selector", "th").text == f"{XSS}.txt"  # text, not markup
    assert browser.find_all("main img") == [] and no_alert(browser)
    assert rows["zeros.bin"].find_element("css selector", "td").text == "3.0 KiB"
    link = rows["report.txt"].find_element("css selector", "a")
    assert link.get_attribute("href") == f"{ui.url}/runs/{run['id']}/artifacts/report.txt"  # under the API root
    browser.js(
        "window.savedBlobs = []; const make = URL.createObjectURL.bind(URL);"
        "URL.createObjectURL = (blob) => { window.savedBlobs.push(blob); return make(blob); };"
    )
    link.click()
    browser.wait(lambda: browser.js("return window.savedBlobs.length") == 1, 10, "the download's Blob")
    text = browser.driver.execute_async_script("window.savedBlobs[0].text().then(arguments[arguments.length - 1]);")
    assert text == "hello from the run\n"
    assert browser.js("return location.pathname").endswith(f"/ui/runs/{run['id']}")  # no navigation to the API


def test_a_job_form_shows_the_servers_errors_by_the_fields_then_plans_and_runs_that_plan(signed_in, ui):
    browser = signed_in
    browser.open(f"{ui.url}/ui/jobs/examples:hello-world")
    name = browser.wait_for("#arg-name")
    times = browser.find("#arg-times")
    assert name.get_attribute("required") is not None and times.get_attribute("value") == "1"
    name.send_keys("R2D2")
    times.clear()
    times.send_keys("9")
    browser.find("#plan-button").click()
    browser.wait(lambda: browser.find("#arg-name").get_attribute("aria-invalid") == "true", message="the 422")
    assert "does not match the pattern" in browser.find("#arg-name-error").text
    assert "at most 5" in browser.find("#arg-times-error").text
    assert browser.find_all("#plan") == []
    name.clear()
    name.send_keys("Ada")
    times.clear()
    times.send_keys("2")
    browser.find("#plan-button").click()
    plan = browser.wait_for("#plan")
    digest = plan.get_attribute("data-digest")
    expected = ui.post("/plans", {"job": "examples:hello-world", "args": {"name": "Ada", "times": "2"}}).json()
    assert digest == expected["plan"]["digest"] == browser.find("#plan-digest").text
    assert plan.get_attribute("data-runnable") == "true"
    assert {r.get_attribute("data-check") for r in browser.find_all("#plan-decisions tbody tr")} == {
        d["check"] for d in expected["plan"]["decisions"]
    }
    browser.js("arguments[0].scrollIntoView({block: 'center'})", browser.find("#plan-button"))
    browser.screenshot("job-plan")
    browser.find("#run-button").click()
    browser.wait(lambda: "/ui/runs/" in browser.driver.current_url, message="the run's page")
    run_id = browser.driver.current_url.rsplit("/", 1)[1]
    browser.wait(lambda: browser.find_all('article[data-status="succeeded"]'), 15, "the run to succeed")
    run = ui.get(f"/runs/{run_id}").json()["run"]
    assert run["plan_digest"] == digest and run["args"] == {"name": "Ada", "times": 2}
    browser.wait(lambda: "Hello, Ada" in browser.find(".log").text, message="the run's output")


def test_a_job_form_has_a_control_for_every_kind_of_argument_and_masks_secrets(signed_in, ui):
    browser = signed_in
    browser.open(f"{ui.url}/ui/jobs/ui:deploy")
    target = browser.wait_for("#arg-target")
    assert target.tag_name == "select"
    assert [o.text for o in target.find_elements("css selector", "option")] == ["staging", "production"]
    assert browser.find("#arg-dry_run").get_attribute("type") == "checkbox"
    assert browser.find("#arg-dry_run").is_selected()
    assert browser.find("#arg-password").get_attribute("type") == "password"
    ratio = browser.find("#arg-ratio")
    ratio.clear()
    ratio.send_keys("2")
    browser.find("#plan-button").click()
    # The browser's hint and the server's answer both name the field; the password is required.
    browser.wait(lambda: browser.find("#arg-ratio").get_attribute("aria-invalid") == "true", message="the 422")
    assert "at most 1" in browser.find("#arg-ratio-error").text
    assert browser.find("#arg-password-error").text
    ratio.clear()
    ratio.send_keys("0.25")
    browser.find("#arg-password").send_keys("hunter2")
    browser.find("#arg-target option:nth-child(2)").click()
    browser.find("#arg-dry_run").click()
    browser.find("#plan-button").click()
    plan = browser.wait_for("#plan")
    assert "hunter2" not in plan.text and '"***"' in plan.text
    browser.find("#run-button").click()
    browser.wait(lambda: browser.find_all('article[data-status="succeeded"]'), 15, "the run to succeed")
    expected = {"target": "production", "dry_run": "false", "password": "***", "ratio": "0.25"}
    read_args = (  # in one go: the table is redrawn when the run's status changes
        "return Object.fromEntries([...document.querySelectorAll('.args tbody tr')]"
        ".map(r => [r.querySelector('th').textContent, r.querySelector('td').textContent]))"
    )
    browser.wait(lambda: browser.js(read_args) == expected, message=f"the arguments {expected}")
    browser.wait(lambda: "target=production dry=false" in browser.find(".log").text, message="the output")


def test_a_plan_whose_job_changed_before_it_ran_says_so(signed_in, ui):
    browser = signed_in
    browser.open(f"{ui.url}/ui/jobs/ui:editable")
    browser.wait_for("#plan-button").click()
    browser.wait_for("#run-button")
    job_file = ui.root / "ui-jobs" / "jobs" / "editable.yaml"
    job_file.write_text(job_file.read_text() + "# edited after planning\n")
    browser.find("#run-button").click()
    assert "changed since planned" in browser.wait_for("#plan-changed").text
    assert "/ui/jobs/" in browser.driver.current_url


def test_a_denied_plan_shows_every_decision_and_offers_no_run(signed_in, ui):
    browser = signed_in
    browser.open(f"{ui.url}/ui/jobs/ui:needs-host-env")
    browser.wait_for("#plan-button").click()
    plan = browser.wait_for("#plan")
    assert plan.get_attribute("data-runnable") == "false"
    denied = browser.find('#plan-decisions tr[data-check="host-env"]')
    assert denied.get_attribute("data-outcome") == "deny" and "deny" in denied.text
    assert not browser.find("#run-button").is_enabled()
    assert "denies" in plan.text
    browser.js("arguments[0].scrollIntoView()", plan)
    browser.screenshot("plan-denied")


def test_cancel_from_the_run_page(signed_in, ui):
    browser = signed_in
    run = ui.submit("slow", {"seconds": 60})
    browser.open(f"{ui.url}/ui/runs/{run['id']}")
    browser.wait(lambda: "tick 1" in browser.find(".log").text, 10, "the run to be running")
    browser.find("#cancel-run").click()
    browser.wait(lambda: browser.find_all('article[data-status="cancelled"]'), 15, "the run to be cancelled")
    assert ui.run_status(run["id"]) == "cancelled"
    assert browser.find_all("#cancel-run") == []


def test_a_waiting_run_shows_its_place_in_line_until_it_starts(signed_in, ui):
    browser = signed_in
    first = ui.submit("ui:one-at-a-time")
    second = ui.submit("ui:one-at-a-time", {"seconds": 0})
    try:
        browser.open(f"{ui.url}/ui/runs/{second['id']}")
        text = browser.wait_for("#run-queue").text
        assert text == "#1 in line: concurrency group solo (1 of 1 running)"
        ui.post(f"/runs/{first['id']}/cancel")
        browser.wait(lambda: browser.find_all('article[data-status="succeeded"]'), 20, "the waiting run to run")
        assert browser.find_all("#run-queue") == [] and "started" in browser.find(".log").text
    finally:
        ui.post(f"/runs/{first['id']}/cancel")


def test_an_approver_approves_the_plan_or_denies_it_from_the_run_page(browser, ui):
    first, second = ui.submit("ui:gated"), ui.submit("ui:gated")
    try:
        browser.sign_in(f"{ui.url}/ui/", "dev-approver")
        browser.open(f"{ui.url}/ui/runs/{first['id']}")
        browser.wait_for("#approve-run")
        assert first["plan_digest"] in browser.find(".digest").text
        assert browser.find("#run-queue").text == "awaiting approval"
        browser.find("#approve-run").click()
        browser.wait(lambda: browser.find_all('article[data-status="succeeded"]'), 20, "the approved run to succeed")
        assert "approved-run" in browser.find(".log").text and browser.find_all("#approve-run") == []
        browser.open(f"{ui.url}/ui/runs/{second['id']}")
        browser.wait_for("#deny-run").click()  # no reason yet: nothing is sent
        assert ui.run_status(second["id"]) == "awaiting_approval"
        browser.find("#deny-reason").send_keys("not today")
        browser.find("#deny-run").click()
        browser.wait(lambda: browser.find_all('article[data-status="rejected"]'), 15, "the denied run to end")
        assert ui.get(f"/runs/{second['id']}").json()["run"]["reason"] == "not today"
    finally:
        browser.sign_in(f"{ui.url}/ui/")


def test_sources_show_revision_and_sync(signed_in, ui):
    browser = signed_in
    browser.open(f"{ui.url}/ui/sources")
    source = browser.wait_for('#sources-table tr[data-source="ui"]')
    assert ui.get("/sources/ui").json()["source"]["revision"] in source.text
    source.find_element("css selector", "button.sync").click()
    browser.wait(lambda: "changed" in browser.find('#sources-table tr[data-source="ui"] .outcome').text)
    browser.screenshot("sources")


def test_the_runs_list_filters_by_status_and_pages(signed_in, ui):
    browser = signed_in
    failed = ui.submit("fail", {"code": 2})
    ui.wait_finished(failed["id"])
    for _ in range(50):
        ui.submit("noop")
    browser.open(f"{ui.url}/ui/#status=failed")
    browser.wait(lambda: row(browser, failed["id"]), message="the failed run")
    assert {r.get_attribute("data-status") for r in browser.find_all("#runs-table tbody tr")} == {"failed"}
    assert browser.find("#filter-status").get_attribute("value") == "failed"
    browser.open(f"{ui.url}/ui/")
    browser.wait(lambda: browser.find_all("#runs-table tbody tr"), message="the runs")
    browser.screenshot("runs")
    older = browser.wait(lambda: next(iter(browser.find_all(".pager a")), None), message="the Older runs link")
    assert older.text == "Older runs"
    older.click()
    browser.wait(lambda: "#cursor=" in browser.driver.current_url and browser.find_all("#runs-table tbody tr"))
    assert [a.text for a in browser.find_all(".pager a")][0] == "Newest runs"


def test_a_narrow_screen_has_no_sideways_scroll_and_every_control_has_a_label(signed_in, ui):
    browser = signed_in
    size = browser.driver.get_window_size()
    browser.driver.set_window_size(390, 844)
    try:
        for path, ready in (
            ("/ui/", "#runs-table tbody tr"),
            ("/ui/jobs", "#jobs-table"),
            ("/ui/jobs/ui:deploy", "#arg-target"),
            ("/ui/sources", "#sources-table"),
        ):
            browser.open(ui.url + path)
            browser.wait_for(ready)
            assert browser.js("return document.documentElement.scrollWidth <= window.innerWidth"), path
            unlabelled = browser.js(
                "return [...document.querySelectorAll('input, select, textarea, button')]"
                ".filter(el => !(el.labels && el.labels.length) && !el.getAttribute('aria-label')"
                " && !el.textContent.trim()).map(el => el.outerHTML)"
            )
            assert unlabelled == [], path
            if path == "/ui/":
                browser.screenshot("runs-narrow")
    finally:
        browser.driver.set_window_size(size["width"], size["height"])


def test_the_keyboard_alone_reaches_a_job_plans_it_and_sees_where_it_is(signed_in, ui):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys

    browser = signed_in
    browser.open(f"{ui.url}/ui/jobs")
    browser.wait_for('#jobs-table tr[data-job="ui:editable"] a')

    def tab_to(css: str) -> None:
        for _ in range(60):
            ActionChains(browser.driver).send_keys(Keys.TAB).perform()
            if browser.js("return document.activeElement.matches(arguments[0])", css):
                outline = browser.js("return getComputedStyle(document.activeElement).outlineStyle")
                assert outline not in ("", "none"), f"no visible focus on {css}"
                return
        raise AssertionError(f"Tab never reached {css}")

    tab_to('a[href="jobs/ui%3Aeditable"]')
    ActionChains(browser.driver).send_keys(Keys.ENTER).perform()
    browser.wait(lambda: browser.find_all("#plan-button"), message="the job's page")
    tab_to("#plan-button")
    ActionChains(browser.driver).send_keys(Keys.ENTER).perform()
    browser.wait(lambda: browser.js("return document.activeElement.closest('#plan') !== null"), message="the plan")
    tab_to("#run-button")


def test_a_long_output_is_virtualised(signed_in, ui):
    browser = signed_in
    run = ui.submit("print-lots", {"lines": 20000})
    browser.open(f"{ui.url}/ui/runs/{run['id']}")
    browser.wait(lambda: browser.find_all('article[data-status="succeeded"]'), 30, "the run to finish")
    log = browser.find(".log")
    browser.wait(lambda: log.get_attribute("data-lines") == "20002", 30, "every line")
    rows = len(browser.find_all(".log-row:not([hidden])"))
    assert 0 < rows < 200, rows
    assert "line 20000" in log.text  # it follows the end
    browser.js("arguments[0].scrollTop = 0", log)
    browser.wait(lambda: log.find_elements("css selector", ".log-row")[0].text.endswith("step print started"))


def test_a_token_without_runs_write_is_offered_no_run_and_no_cancel(browser, ui, module_jwt_auth):
    token = module_jwt_auth.token("jobs:read runs:read sources:read")
    running = ui.submit("slow", {"seconds": 30})
    try:
        browser.sign_in(f"{ui.url}/ui/", token)
        assert browser.find("#subject").text == "tester"
        browser.open(f"{ui.url}/ui/runs/{running['id']}")
        browser.wait(lambda: "tick 1" in browser.find(".log").text, 10, "the run's output")
        assert browser.find_all("#cancel-run") == []
        browser.open(f"{ui.url}/ui/jobs/examples:hello-world")
        browser.wait_for("#arg-name").send_keys("Ada")
        browser.find("#plan-button").click()
        browser.wait_for("#plan")
        assert browser.find_all("#run-button") == []
        browser.open(f"{ui.url}/ui/sources")
        browser.wait_for("#sources-table")
        assert browser.find_all("button.sync") == []
    finally:
        ui.post(f"/runs/{running['id']}/cancel")
        browser.sign_in(f"{ui.url}/ui/")


def test_a_job_scoped_token_sees_the_runs_view_with_only_its_jobs_runs(browser, ui, module_jwt_auth):
    """``runs:read:SOURCE:JOB`` opens the Runs view like ``runs:read``; the server lists only that job's runs."""
    other = ui.submit("noop")
    mine = ui.submit("examples:hello-world", {"name": "Ada"})
    try:
        browser.sign_in(f"{ui.url}/ui/", module_jwt_auth.token("runs:read:examples:hello-*"))
        assert not browser.find("a[data-nav=runs]").find_element("xpath", "..").get_attribute("hidden")
        browser.open(f"{ui.url}/ui/")
        browser.wait(lambda: row(browser, mine["id"]), message="the hello-world run")
        assert row(browser, other["id"]) == []
    finally:
        browser.sign_in(f"{ui.url}/ui/")


def test_a_job_scoped_write_token_is_offered_run_and_cancel_only_for_its_jobs(browser, ui, module_jwt_auth):
    """``runs:write:examples:hello-*`` gets a Run button for hello-world, none for slow, and no Cancel there."""
    token = module_jwt_auth.token("jobs:read runs:read runs:write:examples:hello-*")
    running = ui.submit("slow", {"seconds": 30})
    try:
        browser.sign_in(f"{ui.url}/ui/", token)
        browser.open(f"{ui.url}/ui/jobs/examples:hello-world")
        browser.wait_for("#arg-name").send_keys("Ada")
        browser.find("#plan-button").click()
        browser.wait_for("#run-button")
        browser.open(f"{ui.url}/ui/jobs/examples:slow")
        browser.wait_for("#plan-button").click()
        browser.wait_for("#plan")
        assert browser.find_all("#run-button") == []
        browser.open(f"{ui.url}/ui/runs/{running['id']}")
        browser.wait(lambda: "tick 1" in browser.find(".log").text, 10, "the run's output")
        assert browser.find_all("#cancel-run") == []
    finally:
        ui.post(f"/runs/{running['id']}/cancel")
        browser.sign_in(f"{ui.url}/ui/")


def test_the_page_has_a_strict_csp_and_logged_no_violation(browser, ui):
    page = requests.get(f"{ui.url}/ui/", timeout=10)
    csp = page.headers["Content-Security-Policy"]
    assert "default-src 'self'" in csp and "unsafe" not in csp
    browser.open(f"{ui.url}/ui/")
    browser.wait(lambda: (browser.stream("runs") or {}).get("state") == "live", message="the runs list")
    # Every earlier test of this module ran in this browser: its console has seen every view.
    # (Answers the tests asked for, such as a 422, are logged as failed loads: those are not problems.)
    problems = [
        e
        for e in browser.logs()
        if "Content Security Policy" in e["message"]
        or "Refused to" in e["message"]
        or (e["level"] == "SEVERE" and e["source"] != "network")
    ]
    assert problems == [], json.dumps(problems, indent=1)
