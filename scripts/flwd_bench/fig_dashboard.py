"""Figure 7: the dashboard in a real browser (headless Chromium, driven by Selenium).

A fresh flwd gets ``HISTORY`` finished runs (10,000 ``noop`` runs, submitted through the
API and drained). Then, in one Chromium tab signed in with the dev token:

* **first contentful paint** of ``/ui/``, loaded ``LOADS`` times (p50), from
  ``performance.getEntriesByName('first-contentful-paint')``; beside it, when the first
  page of runs was in the DOM (the page's ``flwd:runs-listed`` mark);
* **event-to-screen latency** of the live runs list: runs are submitted through the API
  at 20 a second while the page is open; a MutationObserver stamps the moment each run's
  row is added; latency = that stamp minus the wall-clock time just before the POST
  (the same machine's clock; p50 and p99);
* **the tab's memory after streaming a million lines**: a run printing ``LINES`` lines
  (``print-lots``) is opened on its page, which follows its output to the end; then a
  garbage collection and the JS heap in use (CDP ``Performance.getMetrics``,
  ``JSHeapUsedSize``), against the same on a run with no output. The longest main-thread
  stall while the lines arrive (a 10 ms timer's worst lateness) says whether the tab froze.
"""

from __future__ import annotations

import os
import shutil
import time
from typing import TYPE_CHECKING, Any

from .report import Goal, Row, summary

if TYPE_CHECKING:
    from .cli import Context

MB = 1024 * 1024
OBSERVE_ROWS = """
window.benchSeen = {};
const body = document.querySelector('#runs-table tbody');
new MutationObserver((mutations) => {
  const now = performance.timeOrigin + performance.now();
  for (const m of mutations) for (const node of m.addedNodes) {
    const id = node.dataset && node.dataset.runId;
    if (id && !(id in window.benchSeen)) window.benchSeen[id] = now;
  }
}).observe(body, {childList: true});
"""
STALL_PROBE = """
window.benchStall = 0;
let last = performance.now();
setInterval(() => {
  const now = performance.now();
  window.benchStall = Math.max(window.benchStall, now - last - 10);
  last = now;
}, 10);
"""


def start_chrome() -> Any:
    """Headless Chromium from the system packages (chromium, chromium-driver); nothing is downloaded."""
    os.environ.setdefault("SE_OFFLINE", "true")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.options import Options
        from selenium.webdriver.chrome.service import Service
    except ImportError as exc:
        raise RuntimeError("figure 7 needs selenium: .venv/bin/pip install -e '.[test]'") from exc
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not browser or not driver:
        raise RuntimeError("figure 7 needs chromium and chromium-driver: scripts/install-test-deps")
    options = Options()
    options.binary_location = browser
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,900"):
        options.add_argument(arg)
    return webdriver.Chrome(service=Service(driver), options=options)


def wait_js(chrome: Any, script: str, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = chrome.execute_script(script)
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.02)


def heap_used(chrome: Any) -> int:
    chrome.execute_cdp_cmd("HeapProfiler.collectGarbage", {})
    chrome.execute_cdp_cmd("Performance.enable", {})
    metrics = chrome.execute_cdp_cmd("Performance.getMetrics", {})["metrics"]
    return int(next(m["value"] for m in metrics if m["name"] == "JSHeapUsedSize"))


def drain(api: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    for status in ("queued", "running"):
        while api.json("GET", f"/runs?status={status}&limit=1")["runs"]:
            if time.monotonic() > deadline:
                raise TimeoutError("runs still queued or running")
            time.sleep(0.2)


def measure(ctx: Context) -> tuple[list[Row], dict[str, Any]]:
    history = ctx.opts.pick(10_000, 500)
    loads = ctx.opts.pick(20, 5)
    live_runs = ctx.opts.pick(200, 40)
    lines = ctx.opts.pick(1_000_000, 50_000)
    server = ctx.flwd(
        "dashboard",
        limits={"max_run_history": history + live_runs + 10, "max_output_bytes": 64 * lines},
    )
    chrome = None
    api = server.api()
    try:
        for _ in range(history):
            api.json("POST", "/runs", {"job": "noop"}, expect=202)
        drain(api, 600)
        chrome = start_chrome()
        page = server.url + "/ui/"
        chrome.get(page)
        chrome.execute_script("sessionStorage.setItem('flwd.token', 'dev-token')")

        paints, listed = [], []
        for _ in range(loads):
            chrome.get(page)
            fcp = wait_js(
                chrome,
                "const e = performance.getEntriesByName('first-contentful-paint')[0]; return e && e.startTime",
                30,
                "first contentful paint",
            )
            mark = wait_js(
                chrome,
                "const e = performance.getEntriesByName('flwd:runs-listed')[0]; return e && e.startTime",
                30,
                "the runs list",
            )
            paints.append(fcp)
            listed.append(mark)

        wait_js(chrome, "return window.flwd && window.flwd.streams.runs.state === 'live'", 30, "the live list")
        chrome.execute_script(OBSERVE_ROWS)
        submitted: dict[str, float] = {}
        began = time.monotonic()
        for i in range(live_runs):
            due = began + i / 20
            pause = due - time.monotonic()
            if pause > 0:
                time.sleep(pause)  # pacing: 20 submissions a second
            sent = time.time() * 1000
            run = api.json("POST", "/runs", {"job": "noop"}, expect=202)["run"]
            submitted[run["id"]] = sent
        seen = wait_js(
            chrome,
            f"return Object.keys(window.benchSeen).length >= {live_runs} && window.benchSeen",
            60,
            "every new run's row",
        )
        latencies = [seen[run_id] - sent for run_id, sent in submitted.items()]
        drain(api, 120)

        quiet = api.json("POST", "/runs", {"job": "noop"}, expect=202)["run"]
        drain(api, 60)
        chrome.get(f"{page}runs/{quiet['id']}")
        wait_js(chrome, "return document.querySelector('article[data-status=\"succeeded\"]')", 30, "a run page")
        baseline = heap_used(chrome)
        loud = api.json("POST", "/runs", {"job": "print-lots", "args": {"lines": lines}}, expect=202)["run"]
        started = time.monotonic()
        chrome.get(f"{page}runs/{loud['id']}")
        wait_js(chrome, "return document.querySelector('.log')", 30, "the log")
        chrome.execute_script(STALL_PROBE)
        wait_js(
            chrome,
            f"return document.querySelector('.log').dataset.lines === '{lines + 2}'",
            1200,
            f"{lines:,} lines in the tab",
        )
        streamed = time.monotonic() - started
        stall = chrome.execute_script("return window.benchStall")
        heap = heap_used(chrome)
        rows_in_dom = chrome.execute_script("return document.querySelectorAll('.log-row').length")
    finally:
        api.close()
        if chrome is not None:
            chrome.quit()
        server.stop()
    paint_ms, listed_ms, latency_ms = summary(paints), summary(listed), summary(latencies)
    rows = [
        Row(7, f"/ui/ first contentful paint p50 ({history:,} runs)", paint_ms["p50"], "ms", Goal("<=", 300)),
        Row(7, "/ui/ first page of runs in the DOM p50", listed_ms["p50"], "ms"),
        Row(7, f"live list: POST -> row on screen p50 ({live_runs} runs)", latency_ms["p50"], "ms"),
        Row(7, "live list: POST -> row on screen p99", latency_ms["p99"], "ms", Goal("<=", 250)),
        Row(7, f"tab JS heap after {lines:,} lines", heap / MB, "MB"),
        Row(7, "tab JS heap on a run without output", baseline / MB, "MB"),
        Row(7, f"{lines:,} lines into the tab", lines / streamed, "lines/s"),
        Row(7, "longest main-thread stall while they arrive", stall, "ms"),
    ]
    details = {
        "history": history,
        "loads": loads,
        "first_contentful_paint_ms": paint_ms,
        "runs_listed_ms": listed_ms,
        "live_runs": live_runs,
        "event_to_screen_ms": latency_ms,
        "lines": lines,
        "heap_used_bytes": heap,
        "heap_used_baseline_bytes": baseline,
        "stream_seconds": round(streamed, 2),
        "longest_stall_ms": stall,
        "log_rows_in_dom": rows_in_dom,
        "flwd_config": server.config,
    }
    return rows, details
