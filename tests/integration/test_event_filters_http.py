"""GET /events?type=&run=&job=&source= on a real server: the replay and the live stream select alike, resume
with Last-Event-ID keeps its promise, events without a run match source filters only, bad values are a 400.

The module's server runs twice: with the broadcaster (one sending thread, filters indexed) and with a thread
per stream, so both live paths are held to the same answers.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import requests

from tests.fixtures.helpers import cli, read_stream, sse_events
from tests.fixtures.server import ServerProcess

pytestmark = pytest.mark.integration
HELLO = {"name": "Filter"}


@pytest.fixture(scope="module", params=["broadcaster", "thread-per-stream"])
def server(request, tmp_path_factory):
    config = {"workers": 2, "sse": {"heartbeat": 1.0, "broadcast": request.param == "broadcaster"}}
    srv = ServerProcess(tmp_path_factory.mktemp("event-filters"), config, dev=True, env=None).start()
    yield srv
    srv.stop()


def newest_id(server: ServerProcess) -> int:
    """The id of the newest event: that of a run we start and finish now."""
    run = server.submit("noop")
    return int(server.events(run["id"])[-1]["id"])


def stream(server: ServerProcess, query: str, until, headers: dict[str, str] | None = None) -> list[dict[str, Any]]:
    return read_stream(f"{server.url}/events?{query}", {**server.headers(), **(headers or {})}, until=until, timeout=30)


def finished(run_id: str):
    return lambda e: e["event"] == "run.finished" and e["data"]["run_id"] == run_id


def all_finished(run_ids: list[str]):
    """Until the run.finished of each of ``run_ids`` went by, in whatever order they end."""
    waiting = set(run_ids)

    def seen(event: dict[str, Any]) -> bool:
        if event["event"] == "run.finished":
            waiting.discard(event["data"]["run_id"])
        return not waiting

    return seen


def test_the_live_stream_and_the_replay_select_the_same_events(server):
    start = newest_id(server)
    query = f"after={start}&job=hello-world&type=run.*,step.finished"
    with requests.get(f"{server.url}/events?{query}", headers=server.headers(), stream=True, timeout=(5, 30)) as live:
        assert live.status_code == 200
        hello = [server.submit("hello-world", HELLO)["id"]]
        others = [server.submit("noop")["id"], server.submit("fail")["id"]]
        hello.append(server.submit("hello-world", HELLO)["id"])
        received, done = [], all_finished(hello)
        for event in sse_events(live.iter_lines(chunk_size=None)):
            if "comment" not in event:
                received.append(event)
                if done(event):
                    break
    for run_id in hello + others:
        server.wait_finished(run_id)
    assert all(e["data"]["run_id"] in hello for e in received), {e["data"]["run_id"] for e in received}
    assert all(e["event"].startswith("run.") or e["event"] == "step.finished" for e in received)
    kinds = {(e["data"]["run_id"], e["event"]) for e in received}
    assert {(r, t) for r in hello for t in ("run.queued", "run.started", "step.finished", "run.finished")} <= kinds
    ids = [int(e["id"]) for e in received]
    assert ids == sorted(set(ids)) and min(ids) > start  # the global ids, in order, none twice

    replayed = stream(server, query, lambda e: e["id"] == received[-1]["id"])
    assert [e["id"] for e in replayed] == [e["id"] for e in received]

    by_run = stream(server, f"after={start}&run={hello[0]},{others[0]}", all_finished([hello[0], others[0]]))
    assert {e["data"]["run_id"] for e in by_run} == {hello[0], others[0]}


def test_resuming_a_filtered_stream_has_no_gap_and_no_duplicate(server):
    start = newest_id(server)
    runs = [server.submit("hello-world", {**HELLO, "times": 3})["id"] for _ in range(3)]
    for run_id in runs:
        server.wait_finished(run_id)
    query = f"after={start}&job=hello-world&type=step.output,run.finished"

    def count(n: int):
        seen = []
        return lambda e: seen.append(e) or len(seen) >= n

    whole = stream(server, query, count(3 * 4))  # each run: three lines and its end
    assert {e["data"]["run_id"] for e in whole} == set(runs)
    assert [e["event"] for e in whole].count("run.finished") == 3
    for cut in (1, 5, 8):
        first = whole[:cut]
        rest = stream(server, query, count(12 - cut), headers={"Last-Event-ID": first[-1]["id"]})
        assert [e["id"] for e in first + rest] == [e["id"] for e in whole], cut
    rest = stream(server, query.replace(f"after={start}", f"after={whole[6]['id']}"), count(5))
    assert [e["id"] for e in rest] == [e["id"] for e in whole[7:]]


def test_events_without_a_run_match_source_filters_and_never_run_or_job_ones(server, tmp_path):
    start = newest_id(server)
    (tmp_path / "jobs").mkdir()
    (tmp_path / "jobs" / "tally.yaml").write_text("name: tally\nsteps:\n  - run: echo counted\n")
    name = f"extra-{start}"
    assert server.post("/sources", {"type": "local", "name": name, "path": str(tmp_path)}).status_code == 201
    assert server.post(f"/sources/{name}/sync").status_code == 200
    run = server.submit(f"{name}:tally")["id"]
    noise = server.submit("noop")["id"]
    server.wait_finished(noise)

    mine = stream(server, f"after={start}&source={name}", finished(run))
    synced = [e for e in mine if e["data"]["run_id"] is None]
    assert synced and all(e["event"] == "source.synced" and e["data"]["data"]["source"] == name for e in synced)
    assert {e["data"]["run_id"] for e in mine} == {None, run}

    by_job = stream(server, f"after={start}&job=tally", finished(run))
    assert {e["data"]["run_id"] for e in by_job} == {run}
    syncs = stream(server, f"after={start}&type=source.synced&source=examples,{name}", lambda e: True)
    assert syncs[0]["data"]["data"]["source"] == name


@pytest.mark.parametrize(
    ("query", "parameter"),
    [
        ("type=nosuch.event", "type"),
        ("type=run.finished;step.*", "type"),
        ("run=not-a-run-id", "run"),
        ("job=Hello%20World", "job"),
        ("source=a,,b", "source"),
        ("colour=red", "colour"),
    ],
)
def test_a_bad_filter_is_a_400_problem_that_names_it(server, query, parameter):
    response = server.get(f"/events?{query}")
    assert response.status_code == 400 and response.headers["Content-Type"] == "application/problem+json"
    assert repr(parameter) in response.json()["detail"]


def test_the_document_declares_the_filters_of_events(server):
    operation = server.get("/openapi.json").json()["paths"]["/events"]["get"]
    declared = {p["name"]: p for p in operation["parameters"] if p["in"] == "query"}
    assert {"after", "ticket", "type", "run", "job", "source"} == set(declared)
    assert all(declared[name]["schema"]["pattern"] for name in ("type", "run", "job", "source"))


def export_records(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines()]


def test_the_export_holds_the_events_without_a_run_in_id_order_over_http_and_the_cli(server, tmp_path):
    start = newest_id(server)
    (tmp_path / "jobs").mkdir()
    (tmp_path / "jobs" / "audit.yaml").write_text("name: audit\nsteps:\n  - run: echo audited\n")
    name = f"audited-{start}"
    assert server.post("/sources", {"type": "local", "name": name, "path": str(tmp_path)}).status_code == 201
    assert server.post(f"/sources/{name}/sync").status_code == 200
    run = server.submit(f"{name}:audit")["id"]
    server.wait_finished(run)
    streamed = stream(server, f"after={start}&source={name}", finished(run))
    syncs = [int(e["id"]) for e in streamed if e["data"]["run_id"] is None]
    assert syncs

    whole = export_records(server.get("/export").text)
    assert whole[0]["format"] == 4 and whole[-1]["record"] == "end"
    runless = [r["event"] for r in whole if r["record"] == "event" and r["event"]["run_id"] is None]
    assert [e["id"] for e in runless] == sorted(e["id"] for e in runless)
    assert [e["id"] for e in runless if e["data"].get("source") == name] == syncs
    assert whole[-1]["events"] == sum(r["record"] == "event" for r in whole)

    mine = export_records(server.get("/export", params={"source": name}).text)
    assert [r["run"]["id"] for r in mine if r["record"] == "run"] == [run]
    assert [r["event"]["id"] for r in mine if r["record"] == "event" and r["event"]["run_id"] is None] == syncs
    by_job = export_records(server.get("/export", params={"job": "audit"}).text)
    assert [r["event"]["run_id"] for r in by_job if r["record"] == "event"] == [run] * (len(by_job) - 3)

    done = cli(":export", "--server", server.url, "--source", name, "-o", "-", env={"FLWD_TOKEN": "dev-token"})
    assert done.returncode == 0, done.stderr
    by_cli = export_records(done.stdout)
    assert by_cli[1:] == mine[1:]  # all but the header's generated_at
