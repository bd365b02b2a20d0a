"""Structured logs: every line JSON (gunicorn's own too), a request id in the access line and the
response header, one line per policy decision, and no query strings or tokens anywhere."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
import requests

from tests.fixtures.helpers import wait_until
from tests.fixtures.server import ServerProcess


@pytest.fixture(scope="module")
def logged(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    server = ServerProcess(tmp_path_factory.mktemp("logs"), {"workers": 2, "threads": 8}, dev=True, env=None).start()
    yield server
    server.stop()


def log_lines(server: ServerProcess) -> list[dict]:
    return [json.loads(line) for line in server.logs().splitlines() if line.strip()]


def find(server: ServerProcess, **fields) -> dict:
    def match() -> dict | None:
        return next((line for line in log_lines(server) if all(line.get(k) == v for k, v in fields.items())), None)

    return wait_until(match, 10, 0.05, f"a log line with {fields}")


def test_a_request_id_is_echoed_and_logged_on_the_access_line(logged):
    response = logged.get("/jobs", headers={"X-Request-ID": "req-test-123"})
    assert response.headers["X-Request-ID"] == "req-test-123"
    line = find(logged, request_id="req-test-123")
    assert (line["event"], line["method"], line["path"], line["status"], line["subject"]) == (
        "http.request",
        "GET",
        "/jobs",
        200,
        "dev",
    )
    generated = logged.get("/jobs").headers["X-Request-ID"]
    assert len(generated) >= 16 and find(logged, request_id=generated)["path"] == "/jobs"
    unsafe = logged.get("/jobs", headers={"X-Request-ID": "bad id\twith spaces"}).headers["X-Request-ID"]
    assert unsafe != "bad id\twith spaces" and find(logged, request_id=unsafe)


def test_a_policy_decision_is_one_json_line_with_run_check_outcome_and_reason(logged):
    run = logged.submit("hello-world", {"name": "Logs"})
    logged.wait_finished(run["id"])
    events = [e["data"]["data"] for e in logged.events(run["id"]) if e["event"] == "policy.decision"]
    assert events
    for decision in events:
        line = find(logged, event="policy.decision", run_id=run["id"], check=decision["check"])
        assert (line["outcome"], line["reason"]) == (decision["outcome"], decision["reason"])
        assert line["logger"] == "flwd.decisions" and line["level"] == "info"


def test_query_strings_and_tokens_never_reach_the_log(logged):
    assert logged.get("/runs?job=secret-q-991", headers={"X-Request-ID": "req-query-1"}).status_code == 200
    assert find(logged, request_id="req-query-1")["path"] == "/runs"
    assert (
        logged.get("/jobs?note=secret-q-992").status_code == 400
    )  # an unknown parameter is refused, and not logged either
    assert (
        requests.get(
            logged.url + "/jobs",
            headers={"Authorization": "Bearer bogus-token-991", "X-Request-ID": "req-bad-token"},
            timeout=5,
        ).status_code
        == 401
    )
    assert find(logged, request_id="req-bad-token")["status"] == 401
    assert logged.get("/runs/x/events?access_token=leaked-991").status_code == 400
    text = logged.logs()
    assert (
        "secret-q-991" not in text
        and "secret-q-992" not in text
        and "bogus-token-991" not in text
        and "leaked-991" not in text
    )


def test_every_line_is_json_including_gunicorns_own(logged):
    lines = log_lines(logged)  # raises if any line is not JSON
    gunicorn = [line for line in lines if line["logger"] == "gunicorn.error"]
    assert any("Booting worker" in line["message"] for line in gunicorn)
    assert all({"time", "level", "logger", "message"} <= set(line) for line in lines)
