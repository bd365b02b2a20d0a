"""Execution across worker processes: the concurrency bound, resume, crash recovery - on SQLite and on PostgreSQL."""

from __future__ import annotations

import itertools
import os
import signal

import pytest
import requests

from flwd_server.models import parse_iso
from tests.fixtures.helpers import processes_of_run, read_stream, sse_events, wait_until

pytestmark = pytest.mark.integration


def local_source(tmp_path, jobs: dict[str, str]) -> dict:
    folder = tmp_path / "jobs-src"
    (folder / "jobs").mkdir(parents=True, exist_ok=True)
    for name, text in jobs.items():
        (folder / "jobs" / f"{name}.yaml").write_text(text)
    return {"type": "local", "name": "t", "path": str(folder)}


TICKER = """name: ticker
args:
  count: {type: integer, default: 20}
steps:
  - run: 'i=0; while [ $i -lt $FLWD_ARG_COUNT ]; do i=$((i+1)); echo "line $i"; sleep 0.05; done'
"""
NAP = """name: nap
steps:
  - run: 'sleep 1; echo rested'
"""


def test_max_concurrent_runs_holds_across_three_workers_and_keeps_order(start_server, tmp_path, db_backend):
    server = start_server(
        {
            **db_backend,
            "workers": 3,
            "limits": {"max_concurrent_runs": 2},
            "sources": [local_source(tmp_path, {"nap": NAP})],
        }
    )
    ids = [server.submit("nap")["id"] for _ in range(10)]
    runs = [server.wait_finished(run_id, timeout=60) for run_id in ids]
    assert [r["status"] for r in runs] == ["succeeded"] * 10

    intervals = []
    for run_id in ids:
        events = server.events(run_id)
        times = {e["event"]: parse_iso(e["data"]["time"]) for e in events}
        intervals.append((times["run.started"], times["run.finished"]))
    edges = sorted(
        [(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals], key=lambda e: (e[0], e[1])
    )
    running = list(itertools.accumulate(delta for _, delta in edges))
    assert max(running) == 2  # two at a time: never more, and the allowance was used

    started = [parse_iso(r["started_at"]) for r in runs]
    assert started == sorted(started)  # claimed in submission order


def test_a_client_that_reconnects_with_last_event_id_gets_every_event_once(start_server, tmp_path, db_backend):
    server = start_server({**db_backend, "workers": 3, "sources": [local_source(tmp_path, {"ticker": TICKER})]})
    run = server.submit("ticker", {"count": 30})
    url = f"{server.url}/runs/{run['id']}/events"
    seen: list[int] = []
    finished = False
    # Read a few events, drop the connection, come back (maybe to another worker), until the end.
    while not finished:
        headers = server.headers()
        if seen:
            headers["Last-Event-ID"] = str(seen[-1])
        with requests.get(url, headers=headers, stream=True, timeout=(5, 20)) as response:
            assert response.status_code == 200
            for event in sse_events(response.iter_lines(chunk_size=None)):
                if "comment" in event:
                    continue
                seen.append(int(event["id"]))
                finished = event["event"] == "run.finished"
                if finished or len(seen) % 7 == 0:
                    break
    full = [int(e["id"]) for e in server.events(run["id"])]
    assert seen == full  # every event exactly once, in order
    assert seen == sorted(set(seen))
    lines = [e["data"]["data"]["line"] for e in server.events(run["id"]) if e["event"] == "step.output"]
    assert lines == [f"line {i}" for i in range(1, 31)]

    after = read_stream(f"{url}?after={full[3]}", server.headers())
    assert [int(e["id"]) for e in after] == full[4:]
    assert server.get(f"/runs/{run['id']}/events", headers={"Last-Event-ID": str(full[-1])}).status_code == 204


def test_the_global_stream_sees_events_written_by_every_worker(start_server, tmp_path, db_backend):
    server = start_server(
        {
            **db_backend,
            "workers": 3,
            "limits": {"max_concurrent_runs": 6},
            "sources": [local_source(tmp_path, {"nap": NAP})],
        }
    )
    owners: set[str] = set()
    position = 0
    for _ in range(5):  # which worker claims a run is up to them: go on until two did
        ids = {server.submit("nap")["id"] for _ in range(6)}
        finished: set[str] = set()

        def until(event, ids=ids, finished=finished):
            if event["event"] == "run.finished" and event["data"]["run_id"] in ids:
                finished.add(event["data"]["run_id"])
            return finished == ids

        events = read_stream(f"{server.url}/events?after={position}", server.headers(), until=until, timeout=30)
        ids_seen = [int(e["id"]) for e in events]
        assert ids_seen == sorted(set(ids_seen)) and ids_seen[0] > position
        position = ids_seen[-1]
        owners |= {e["data"]["data"]["owner"] for e in events if e["event"] == "run.started"}
        if len(owners) >= 2:
            break
    assert len(owners) >= 2  # one stream, served by one worker, saw runs executed by several


def test_a_server_killed_mid_run_loses_that_run_and_nothing_acknowledged(start_server, tmp_path, db_backend):
    config = {
        **db_backend,
        "workers": 2,
        "limits": {"max_concurrent_runs": 1},
        "sources": [local_source(tmp_path, {"ticker": TICKER})],
    }
    server = start_server(config)
    victim = server.submit("ticker", {"count": 100000})
    waiting = [server.submit("ticker", {"count": 3}) for _ in range(2)]
    # Read (acknowledge) some of the victim's events before the crash.
    acknowledged = read_stream(
        f"{server.url}/runs/{victim['id']}/events",
        server.headers(),
        until=lambda e: e["event"] == "step.output" and e["data"]["data"]["line"] == "line 5",
    )
    orphans = processes_of_run(victim["id"])
    assert orphans

    server.kill()  # SIGKILL master and workers at once; the job's own process group survives them
    server.start()

    done = server.wait_finished(victim["id"], timeout=30)
    assert done["status"] == "lost" and "stopped" in done["reason"]
    for run in waiting:
        assert server.wait_finished(run["id"], timeout=30)["status"] == "succeeded"
    after = server.events(victim["id"])
    ids_after = {int(e["id"]) for e in after}
    assert {int(e["id"]) for e in acknowledged} <= ids_after
    assert after[-1]["event"] == "run.finished" and after[-1]["data"]["data"]["status"] == "lost"
    wait_until(
        lambda: processes_of_run(victim["id"]) == [], 10, message="the lost run's leftover processes to be killed"
    )


def test_a_killed_worker_is_replaced_and_its_runs_end_lost(start_server, tmp_path, db_backend):
    server = start_server({**db_backend, "workers": 2, "sources": [local_source(tmp_path, {"ticker": TICKER})]})
    run = server.submit("ticker", {"count": 100000})
    pid = _owner_pid(server, run["id"])
    assert pid in server.worker_pids()
    os.kill(pid, signal.SIGKILL)
    done = server.wait_finished(run["id"], timeout=30)
    assert done["status"] == "lost"
    wait_until(lambda: processes_of_run(run["id"]) == [], 10, message="the lost run's processes to be killed")
    follow_up = server.submit("ticker", {"count": 2})
    assert server.wait_finished(follow_up["id"], timeout=30)["status"] == "succeeded"


def _owner_pid(server, run_id: str) -> int:
    events = read_stream(
        f"{server.url}/runs/{run_id}/events", server.headers(), until=lambda e: e["event"] == "run.started"
    )
    owner = next(e for e in events if e["event"] == "run.started")["data"]["data"]["owner"]
    return int(owner.split(":")[1])
