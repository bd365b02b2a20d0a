"""flwd behind real nginx with TLS (etc/nginx/flwd.conf): the reference page's calls over https,
events as they are produced, no compression on streams, heartbeats through the proxy."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator

import pytest
import requests

from flwd_server.models import parse_iso
from tests.fixtures.helpers import require_tool, sse_events, wait_until
from tests.fixtures.nginx import NginxProxy, start_nginx
from tests.fixtures.server import ServerProcess
from tests.integration.test_reference_page import LIST_JOBS, PLAN, STREAM, SUBMIT

pytestmark = pytest.mark.nginx

TICKER = """name: ticker
description: Print a line every half second
args:
  lines: {type: integer, default: 6, minimum: 1, maximum: 100}
timeout: 60
steps:
  - name: tick
    run: 'i=0; while [ "$i" -lt "$FLWD_ARG_LINES" ]; do i=$((i+1)); echo "tick $i"; sleep 0.5; done'
"""
PROXY_READ_TIMEOUT = 2  # seconds, in place of the site's 1h: heartbeats (0.5 s) must keep streams open


@pytest.fixture(scope="module")
def flwd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp("flwd-behind-nginx")
    jobs = root / "ops" / "jobs"
    jobs.mkdir(parents=True)
    (jobs / "ticker.yaml").write_text(TICKER)
    config = {"sse": {"heartbeat": 0.5}, "sources": [{"type": "local", "name": "ops", "path": str(root / "ops")}]}
    server = ServerProcess(root, config, dev=True, env=None).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def proxy(flwd: ServerProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[NginxProxy]:
    nginx = start_nginx(tmp_path_factory.mktemp("nginx"), flwd.port, read_timeout=f"{PROXY_READ_TIMEOUT}s")
    yield nginx
    nginx.stop()


def https(proxy: NginxProxy, method: str, path: str, **kwargs) -> requests.Response:
    headers = {"Authorization": "Bearer dev-token", **kwargs.pop("headers", {})}
    return requests.request(
        method, proxy.url + path, headers=headers, verify=str(proxy.cert), timeout=kwargs.pop("timeout", 10), **kwargs
    )


def curl_over_https(command: str, proxy: NginxProxy, timeout: float = 30) -> str:
    require_tool("curl")
    require_tool("jq")
    literal = command.replace("http://127.0.0.1:8080", proxy.url).replace("curl ", f"curl --cacert {proxy.cert} ", 1)
    done = subprocess.run(
        ["bash", "-c", "set -o pipefail; " + literal], capture_output=True, text=True, timeout=timeout
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_the_reference_page_curl_commands_work_over_https_through_nginx(proxy):
    jobs = json.loads(curl_over_https(LIST_JOBS, proxy))
    assert "hello-world" in [job["name"] for job in jobs["jobs"]]
    plan = json.loads(curl_over_https(PLAN, proxy))["plan"]
    assert plan["runnable"] is True and plan["args"] == {"name": "Alice", "times": 1}
    run = json.loads(curl_over_https(SUBMIT, proxy))["run"]
    stream = curl_over_https(STREAM.replace("RUN_ID", run["id"]), proxy)
    assert "Hello, Alice" in stream
    assert [line for line in stream.splitlines() if line.startswith("event: ")][-1] == "event: run.finished"
    assert '"status":"succeeded"' in stream.split("event: run.finished", 1)[1]


def read_timed(response: requests.Response) -> Iterator[tuple[float, dict]]:
    """SSE events (and heartbeat comments) with the wall-clock time each arrived."""
    for event in sse_events(response.iter_lines(chunk_size=None)):
        yield time.time(), event


def test_events_arrive_through_nginx_as_they_are_written_not_when_the_run_ends(proxy):
    run = https(proxy, "POST", "/runs", json={"job": "ticker", "args": {"lines": 6}}).json()["run"]
    arrivals = []
    with https(proxy, "GET", f"/runs/{run['id']}/events", stream=True, timeout=(5, 30)) as response:
        assert response.status_code == 200
        for arrived, event in read_timed(response):
            if "comment" in event:
                continue
            arrivals.append((arrived, event))
            if event["event"] == "run.finished":
                break
    output = [(arrived, e) for arrived, e in arrivals if e["event"] == "step.output"]
    assert [e["data"]["data"]["line"] for _, e in output] == [f"tick {i}" for i in range(1, 7)]
    for arrived, event in arrivals:
        written = parse_iso(event["data"]["time"])
        # Events written before the stream was opened are history; every later one must be live.
        if written > arrivals[0][0]:
            assert arrived - written < 1.0, (
                f"{event['event']} {event['data']['data']} arrived {arrived - written:.2f}s after it was written"
            )
    finished = parse_iso(arrivals[-1][1]["data"]["time"])
    assert finished - output[0][0] > 2.0, (
        "the first line arrived only when the run ended: the proxy buffered the stream"
    )


def test_an_event_stream_is_never_compressed_and_its_first_event_comes_at_once(proxy):
    jobs = https(proxy, "GET", "/jobs", headers={"Accept-Encoding": "gzip"})
    assert jobs.headers.get("Content-Encoding") == "gzip", (
        "the site compresses JSON; this test would prove nothing otherwise"
    )
    run = https(proxy, "POST", "/runs", json={"job": "ticker", "args": {"lines": 4}}).json()["run"]
    asked = time.monotonic()
    with https(
        proxy, "GET", f"/runs/{run['id']}/events", headers={"Accept-Encoding": "gzip"}, stream=True, timeout=(5, 30)
    ) as response:
        assert response.status_code == 200
        assert "Content-Encoding" not in response.headers
        assert "no-cache" in response.headers["Cache-Control"] and "no-transform" in response.headers["Cache-Control"]
        first = next(e for e in sse_events(response.iter_lines(chunk_size=None)) if "comment" not in e)
        assert time.monotonic() - asked < 1.0
        assert first["event"] == "run.queued"


def test_an_event_stream_sends_the_headers_that_turn_proxy_buffering_off(flwd):
    with flwd.get("/events", stream=True) as response:
        assert response.headers["X-Accel-Buffering"] == "no"
        assert response.headers["Cache-Control"] == "no-cache, no-transform"


def first_event(events: Iterator[tuple[float, dict]], predicate, within: float) -> dict:
    """The first event (not a heartbeat) matching ``predicate``; fail after ``within`` seconds."""
    deadline = time.monotonic() + within
    for _, event in events:
        if "comment" not in event and predicate(event):
            return event
        assert time.monotonic() < deadline, f"no matching event within {within}s"
    raise AssertionError("the stream ended before a matching event")


def test_heartbeats_keep_an_idle_stream_open_through_nginx_past_its_read_timeout(proxy):
    comments = 0
    with https(proxy, "GET", "/events", stream=True, timeout=(5, 10)) as response:
        assert response.status_code == 200
        events = read_timed(response)
        opened = time.monotonic()  # history replays first, then the stream goes idle
        for _, event in events:
            comments += "comment" in event
            if time.monotonic() - opened > 2.5 * PROXY_READ_TIMEOUT:
                break
        assert comments >= 4, f"only {comments} heartbeats in {2.5 * PROXY_READ_TIMEOUT}s"
        # Still open: a run submitted now reaches this very stream.
        run = https(proxy, "POST", "/runs", json={"job": "hello-world", "args": {"name": "Idle"}}).json()["run"]
        seen = first_event(events, lambda e: e["data"]["run_id"] == run["id"], within=10)
        assert seen["event"] == "run.queued"


def test_the_nginx_access_log_has_neither_query_strings_nor_tokens(proxy):
    marker = "q-marker-4711"
    response = https(proxy, "GET", f"/runs?job={marker}", headers={"X-Request-ID": "nginx-log-check-1"})
    assert response.status_code == 200 and response.headers["X-Request-ID"] == "nginx-log-check-1"
    assert https(proxy, "GET", "/jobs", headers={"Authorization": "Bearer not-a-real-token-4711"}).status_code == 401
    proxy_log = wait_until(
        lambda: (text := proxy.access_log.read_text()) and "nginx-log-check-1" in text and " 401 " in text and text,
        5,
        0.05,
        "the access log lines",
    )
    assert '"GET /runs HTTP/1.1" 200' in proxy_log
    assert marker not in proxy_log and "not-a-real-token" not in proxy_log and "dev-token" not in proxy_log


def test_nginx_refuses_a_body_over_client_max_body_size(proxy):
    response = https(
        proxy, "POST", "/runs", data=b"x" * (2 * 1024 * 1024), headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 413
