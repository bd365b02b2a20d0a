"""GET /metrics on a server with two gunicorn workers: a real Prometheus parser reads it and
its numbers match what the test did, whichever worker answers. Also the per-worker stream cap
(streams must not take every request thread), and a client that reads one event and leaves frees
its slot (WSGI sees a disconnect only when a write fails)."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from tests.fixtures.helpers import wait_until
from tests.fixtures.server import ServerProcess


@pytest.fixture(scope="module")
def two_workers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    config = {"workers": 2, "threads": 8, "sse": {"heartbeat": 0.3}, "limits": {"max_concurrent_runs": 4}}
    server = ServerProcess(tmp_path_factory.mktemp("metrics"), config, dev=True, env=None).start()
    wait_until(lambda: len(server.worker_pids()) == 2, 10, 0.05, "two workers")
    yield server
    server.stop()


def scrape(server: ServerProcess) -> dict:
    """One scrape on a fresh connection (so the two workers take turns answering)."""
    response = requests.get(
        server.url + "/metrics", headers={"Authorization": "Bearer dev-token", "Connection": "close"}, timeout=10
    )
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    return {family.name: family for family in text_string_to_metric_families(response.text)}


def sample(families: dict, family: str, name: str | None = None, **labels: str) -> float:
    found = [
        s.value
        for s in families[family].samples
        if s.name == (name or family) and all(s.labels.get(k) == v for k, v in labels.items())
    ]
    return sum(found)


def test_metrics_need_the_metrics_scope(two_workers):
    assert requests.get(two_workers.url + "/metrics", timeout=5).status_code == 401


def test_counters_match_what_was_done_whichever_worker_answers(two_workers):
    server = two_workers
    before = scrape(server)
    hello = [server.submit("hello-world", {"name": "Metrics"}) for _ in range(3)]
    failed = [server.submit("fail", {"code": 4}) for _ in range(2)]
    for run in hello + failed:
        server.wait_finished(run["id"])
    events = {run["id"]: server.events(run["id"]) for run in hello + failed}
    decisions: dict[tuple[str, str], int] = {}
    for stream in events.values():
        for event in stream:
            if event["event"] == "policy.decision":
                key = (event["data"]["data"]["check"], event["data"]["data"]["outcome"])
                decisions[key] = decisions.get(key, 0) + 1
    steps = sum(1 for stream in events.values() for e in stream if e["event"] == "step.finished")
    assert steps == 5 and decisions

    def delta(after: dict, family: str, name: str | None = None, **labels: str) -> float:
        return sample(after, family, name, **labels) - sample(before, family, name, **labels)

    for _ in range(6):
        after = scrape(server)
        assert (
            delta(after, "flwd_runs_finished", "flwd_runs_finished_total", job="hello-world", status="succeeded") == 3
        )
        assert delta(after, "flwd_runs_finished", "flwd_runs_finished_total", job="fail", status="failed") == 2
        assert delta(after, "flwd_runs_submitted", "flwd_runs_submitted_total", job="hello-world") == 3
        assert delta(after, "flwd_run_duration_seconds", "flwd_run_duration_seconds_count") == 5
        assert delta(after, "flwd_step_duration_seconds", "flwd_step_duration_seconds_count", job="fail") == 2
        assert delta(after, "flwd_step_duration_seconds", "flwd_step_duration_seconds_count") == steps
        for (check, outcome), count in decisions.items():
            assert (
                delta(after, "flwd_policy_decisions", "flwd_policy_decisions_total", check=check, outcome=outcome)
                == count
            )
        assert sample(after, "flwd_queue_depth") == 0 and sample(after, "flwd_runs_running") == 0
        assert sample(after, "flwd_runs", job="fail", status="failed") == 2
        assert sample(after, "flwd_processes") == 2
    written = sum(len(stream) for stream in events.values())
    assert delta(scrape(server), "flwd_events_written", "flwd_events_written_total") == written


def open_stream(server: ServerProcess) -> socket.socket:
    """A raw client: send the request, read until the first event has arrived."""
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    sock.sendall(
        b"GET /events HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer dev-token\r\nAccept: text/event-stream\r\n\r\n"
    )
    received = b""
    while b"\nid: " not in received and b"\r\n\r\nid: " not in received and b": ping" not in received:
        chunk = sock.recv(65536)
        assert chunk, received
        received += chunk
    assert received.startswith(b"HTTP/1.1 200"), received[:200]
    return sock


def test_open_streams_are_counted_across_workers_and_freed_when_clients_leave(two_workers):
    server = two_workers
    server.submit("noop")  # so that /events has an event to send at once
    assert wait_until(lambda: sample(scrape(server), "flwd_sse_clients") == 0, 10, 0.1, "no open streams")
    clients = [open_stream(server) for _ in range(4)]
    for _ in range(6):
        assert sample(scrape(server), "flwd_sse_clients") == 4
    for client in clients:  # read one event, then vanish
        client.close()
    started = time.monotonic()
    wait_until(
        lambda: sample(scrape(server), "flwd_sse_clients") == 0,
        0.3 + 2,
        0.05,
        "the streams of closed clients to be freed",
    )
    assert time.monotonic() - started < 0.3 + 2


@pytest.fixture(scope="module")
def few_threads(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    # At most 2 streams (under flwd :serve the default is 1,000: an open stream holds no thread).
    server = ServerProcess(
        tmp_path_factory.mktemp("cap"),
        {"workers": 1, "threads": 6, "sse": {"heartbeat": 0.3, "max_streams": 2}},
        dev=True,
        env=None,
    ).start()
    yield server
    server.stop()


def test_the_stream_cap_answers_503_with_retry_after_while_healthz_still_answers(few_threads):
    server = few_threads
    server.submit("noop")
    clients = [open_stream(server) for _ in range(2)]
    try:
        with server.get("/events", stream=True) as extra:
            assert extra.status_code == 503
            assert extra.headers["Content-Type"] == "application/problem+json"
            assert int(extra.headers["Retry-After"]) > 0
            assert "sse.max_streams" in extra.json()["detail"]
        for _ in range(5):
            asked = time.monotonic()
            assert requests.get(server.url + "/healthz", timeout=5).status_code == 200
            assert time.monotonic() - asked < 1.0
            assert server.get("/jobs").status_code == 200
    finally:
        for client in clients:
            client.close()

    # Freed (the next heartbeat's write fails): a new stream is accepted again within heartbeat + 2 s.
    def accepted() -> bool:
        with server.get("/events", stream=True, timeout=5) as response:
            return response.status_code == 200

    wait_until(accepted, 0.3 + 2, 0.05, "a stream slot to be free again")
