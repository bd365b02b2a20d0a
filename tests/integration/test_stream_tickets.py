"""Stream tickets: EventSource's stand-in for Authorization, reusable on its stream until it expires."""

from __future__ import annotations

import time

import pytest
import requests

from tests.fixtures.helpers import read_stream, wait_until

pytestmark = pytest.mark.integration


def refused(response: requests.Response) -> None:
    assert response.status_code == 401, (response.status_code, response.text)
    assert response.headers["Content-Type"] == "application/problem+json"


def events(stream: list[dict]) -> list[dict]:
    """The events of a stream as read, without the opening ``retry:``."""
    return [e for e in stream if "event" in e]


def test_a_ticket_reopens_its_runs_stream_resuming_without_gap_or_duplicate_even_after_a_restart(start_server):
    server = start_server({"sse": {"ticket_ttl": 600}})
    run = server.submit("hello-world", {"name": "Ticket"})
    other = server.submit("hello-world", {"name": "Other"})
    server.wait_finished(run["id"])
    server.wait_finished(other["id"])
    everything = events(server.events(run["id"]))
    assert len(everything) >= 4 and everything[-1]["event"] == "run.finished"
    issued = server.post("/stream-tickets", {"run": run["id"]}).json()
    assert issued["expires_in"] == 600 and issued["run_id"] == run["id"]
    ticket = issued["ticket"]
    url = f"{server.url}/runs/{run['id']}/events?ticket={ticket}"

    # A first connection that drops after two events, then EventSource's reconnect: the same URL, Last-Event-ID.
    first = events(read_stream(url, {}, until=lambda e: e.get("id") == everything[1]["id"]))
    assert first == everything[:2]
    resumed = events(read_stream(url, {"Last-Event-ID": first[-1]["id"]}))
    assert first + resumed == everything
    # The page's own reopening: a new EventSource on the same ticket with &after=.
    assert first + events(read_stream(f"{url}&after={first[-1]['id']}", {})) == everything

    # Bound to its run, to the stream routes and to reading.
    refused(requests.get(f"{server.url}/runs/{other['id']}/events?ticket={ticket}", timeout=10))
    refused(requests.get(f"{server.url}/events?ticket={ticket}", timeout=10))
    refused(requests.get(f"{server.url}/runs/{run['id']}?ticket={ticket}", timeout=10))
    refused(requests.post(f"{server.url}/runs/{run['id']}/cancel?ticket={ticket}", timeout=10))

    # The ticket lives in the database: a restarted server on the same one still honours it.
    server.stop()
    server.start()
    assert events(read_stream(url, {})) == everything
    refused(requests.get(f"{server.url}/runs/{other['id']}/events?ticket={ticket}", timeout=10))
    assert ticket not in server.logs()  # never logged: the access log has no query strings


def test_a_ticket_without_a_run_opens_the_event_stream_until_it_expires_and_never_after(start_server):
    ttl = 2.0
    server = start_server({"sse": {"ticket_ttl": ttl, "heartbeat": 0.2}})
    run = server.submit("hello-world", {"name": "Expiring"})
    server.wait_finished(run["id"])
    issued = time.monotonic()
    ticket = server.post("/stream-tickets", None).json()["ticket"]
    url = f"{server.url}/events?ticket={ticket}&run={run['id']}"
    for _ in range(2):  # twice: it is not used up
        stream = events(read_stream(url, {}, until=lambda e: e["event"] == "run.finished"))
        assert stream and stream[-1]["event"] == "run.finished" and stream[-1]["id"]
    # also any run's stream, as before: it may read every event anyway
    assert events(read_stream(f"{server.url}/runs/{run['id']}/events?ticket={ticket}", {}))[-1]["event"] == (
        "run.finished"
    )
    wait_until(lambda: time.monotonic() > issued + ttl + 0.1, ttl + 5, message="the ticket's lifetime to pass")
    refused(requests.get(url, timeout=10))
    refused(requests.get(f"{server.url}/runs/{run['id']}/events?ticket={ticket}", timeout=10))
    fresh = server.post("/stream-tickets", None).json()["ticket"]  # the page's renewal
    assert events(read_stream(f"{server.url}/events?ticket={fresh}", {}, until=lambda e: e["event"] == "run.finished"))
