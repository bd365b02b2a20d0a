"""The NDJSON export: filters, completeness, flat memory, and no transaction held while the reader is slow."""

from __future__ import annotations

import json
import sqlite3
import tracemalloc

import pytest

from flwd_server.errors import BadRequest
from flwd_server.models import parse_iso
from flwd_server.store import Store
from flwd_server.store.export import ExportFilter, export_lines

DAY = parse_iso("2026-01-10T00:00:00Z")


def fill(store: Store, runs: int, events_per_run: int = 5, start: int = 0) -> None:
    """Insert runs (one an hour from DAY, cycling jobs and statuses) with their events, directly."""

    def op(conn: sqlite3.Connection) -> None:
        for i in range(start, start + runs):
            run_id = f"run-{i:06d}"
            status = ("succeeded", "failed", "cancelled")[i % 3]
            conn.execute(
                "INSERT INTO runs(id, job, source, args, status, profile, submitted_by, created_at, started_at, finished_at, plan) "
                "VALUES (?, ?, ?, '{}', ?, 'secure', 'me', ?, ?, ?, '{}')",
                (run_id, ("build", "deploy")[i % 2], "ops", status, DAY + i * 3600, DAY + i * 3600, DAY + i * 3600 + 1),
            )
            conn.executemany(
                "INSERT INTO events(run_id, type, ts, data) VALUES (?, 'step.output', ?, ?)",
                [
                    (
                        run_id,
                        DAY + i * 3600,
                        json.dumps({"step": "s", "stream": "stdout", "line": f"line {j} of {run_id} " + "x" * 80}),
                    )
                    for j in range(events_per_run)
                ],
            )

    store.write(op)


def records(store: Store, **params: str) -> list[dict]:
    body = b"".join(export_lines(store, ExportFilter.parse(params), run_page=7, event_page=3))
    return [json.loads(line) for line in body.splitlines()]


def test_an_export_holds_every_run_and_every_event_in_order(any_store):
    sqlite_store = any_store
    fill(sqlite_store, 20)
    out = records(sqlite_store)
    assert out[0]["record"] == "export" and out[-1] == {"record": "end", "runs": 20, "events": 100, "artifacts": 0}
    runs = [r["run"]["id"] for r in out if r["record"] == "run"]
    assert runs == [f"run-{i:06d}" for i in range(20)]
    current = None
    for record in out[1:-1]:
        if record["record"] == "run":
            current = record["run"]["id"]
        else:
            assert record["record"] == "event" and record["event"]["run_id"] == current
    ids = [r["event"]["id"] for r in out if r["record"] == "event"]
    assert ids == sorted(ids) and len(set(ids)) == 100


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"since": "2026-01-10T05:00:00Z", "until": "2026-01-10T08:00:00Z"}, [5, 6, 7]),
        ({"since": "2026-01-10T06:00:00+01:00", "until": "2026-01-10T07:00:00"}, [5, 6]),
        ({"status": "failed", "until": "2026-01-10T10:00:00Z"}, [1, 4, 7]),
        ({"status": "failed,cancelled", "until": "2026-01-10T06:00:00Z"}, [1, 2, 4, 5]),
        ({"job": "deploy", "until": "2026-01-10T06:00:00Z"}, [1, 3, 5]),
        ({"job": "ops:build", "status": "succeeded"}, [0, 6, 12, 18]),
        ({"job": "other:build"}, []),
    ],
)
def test_filters_choose_the_runs(any_store, params, expected):
    sqlite_store = any_store
    fill(sqlite_store, 20, events_per_run=1)
    out = records(sqlite_store, **params)
    assert [int(r["run"]["id"][4:]) for r in out if r["record"] == "run"] == expected
    assert out[-1]["runs"] == len(expected) and out[-1]["events"] == len(expected)


@pytest.mark.parametrize(
    ("params", "named"),
    [
        ({"since": "yesterday"}, "since"),
        ({"until": "2026-13-01"}, "until"),
        ({"since": "2026-01-02T00:00:00Z", "until": "2026-01-01T00:00:00Z"}, "until"),
        ({"status": "done"}, "status"),
        ({"status": "failed,"}, "status"),
        ({"job": "a\x01b"}, "job"),
        ({"job": ":build"}, "job"),
        ({"stauts": "failed"}, "stauts"),
    ],
)
def test_a_bad_filter_is_refused_naming_it(params, named):
    with pytest.raises(BadRequest) as raised:
        ExportFilter.parse(params)
    assert named in raised.value.detail and raised.value.status == 400


def peak_memory(store: Store) -> int:
    tracemalloc.start()
    try:
        lines = sum(chunk.count(b"\n") for chunk in export_lines(store, ExportFilter()))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert lines > 0
    return peak


def test_an_export_of_ten_thousand_runs_needs_no_more_memory_than_one_of_a_thousand(sqlite_store):
    fill(sqlite_store, 1000)
    small = peak_memory(sqlite_store)
    fill(sqlite_store, 9000, start=1000)
    large = peak_memory(sqlite_store)  # 10,000 runs, 50,000 events, about 8 MB of NDJSON
    assert large < small * 1.3 + 256 * 1024, (
        f"peak {large} bytes for 10,000 runs vs {small} for 1,000: memory grows with the export"
    )
    assert large < 4 * 1024 * 1024


def test_a_paused_export_holds_no_read_transaction(sqlite_store, tmp_path):
    fill(sqlite_store, 50, events_per_run=400)  # more than one chunk
    chunks = export_lines(sqlite_store, ExportFilter())
    next(chunks)
    next(chunks)  # the generator is suspended mid-export, as with a slow client
    fill(sqlite_store, 50, events_per_run=400, start=50)
    other = sqlite3.connect(sqlite_store.path, timeout=0.5, isolation_level=None)
    try:
        busy, log_frames, checkpointed = other.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
    finally:
        other.close()
    assert busy == 0 and log_frames == checkpointed == 0, "a reader pinned the WAL while the export was paused"
    rest = b"".join(chunks)
    end = json.loads(rest.splitlines()[-1])
    assert end["record"] == "end" and end["runs"] >= 50


def test_closing_an_export_early_closes_its_connection(sqlite_store):
    fill(sqlite_store, 50, events_per_run=400)
    chunks = export_lines(sqlite_store, ExportFilter())
    next(chunks)
    next(chunks)
    conn = chunks.gi_frame.f_locals["lines"].gi_frame.f_locals["conn"]
    chunks.close()
    with pytest.raises(sqlite3.ProgrammingError):
        conn.execute("SELECT 1")


def add_runless(store: Store, hours: list[float], sources: list[str]) -> None:
    """source.synced events (no run) at DAY + hours[i], naming sources[i]."""

    def op(conn: sqlite3.Connection) -> None:
        for hour, source in zip(hours, sources, strict=True):
            conn.execute(
                "INSERT INTO events(run_id, type, ts, data) VALUES (NULL, 'source.synced', ?, ?)",
                (DAY + hour * 3600, json.dumps({"source": source})),
            )

    store.write(op)


def test_events_without_a_run_are_in_the_export_in_id_order(any_store):
    """source.synced and the like belong to the audit trail: each comes before the first run queued after it."""
    add_runless(any_store, [0], ["ops"])
    fill(any_store, 3, events_per_run=2)
    add_runless(any_store, [3.5, 3.6], ["tools", "ops"])
    fill(any_store, 2, events_per_run=2, start=3)
    add_runless(any_store, [9], ["ops"])
    out = records(any_store)
    assert out[0]["format"] == 4
    shape = [r["run"]["id"][4:] if r["record"] == "run" else r["event"]["run_id"] for r in out[1:-1]]
    runs = [f"run-{i:06d}" for i in range(5)]
    assert shape == [
        None,
        *[x for i in range(3) for x in (f"{i:06d}", runs[i], runs[i])],
        None,
        None,
        *[x for i in range(3, 5) for x in (f"{i:06d}", runs[i], runs[i])],
        None,
    ]
    runless = [r["event"]["id"] for r in out if r["record"] == "event" and r["event"]["run_id"] is None]
    assert runless == sorted(runless) and len(runless) == 4
    assert out[-1] == {"record": "end", "runs": 5, "events": 5 * 2 + 4, "artifacts": 0}


@pytest.mark.parametrize(
    ("params", "sources"),
    [
        ({}, ["ops", "tools", "ops"]),
        ({"source": "ops"}, ["ops", "ops"]),
        ({"source": "tools"}, ["tools"]),
        ({"since": "2026-01-10T03:00:00Z", "until": "2026-01-10T10:00:00Z"}, ["tools"]),
        ({"status": "failed"}, []),  # events without a run have no status
        ({"job": "build"}, []),  # nor a job
    ],
)
def test_filters_apply_to_events_without_a_run_where_they_mean_something(any_store, params, sources):
    add_runless(any_store, [1, 4, 12], ["ops", "tools", "ops"])
    fill(any_store, 6, events_per_run=1)
    out = records(any_store, **params)
    got = [r["event"]["data"]["source"] for r in out if r["record"] == "event" and r["event"]["run_id"] is None]
    assert got == sources


def test_the_source_filter_chooses_runs_too_and_must_agree_with_the_job_filter(any_store):
    fill(any_store, 3, events_per_run=1)
    assert len([r for r in records(any_store, source="ops") if r["record"] == "run"]) == 3
    assert [r for r in records(any_store, source="tools") if r["record"] == "run"] == []
    assert len([r for r in records(any_store, source="ops", job="ops:build") if r["record"] == "run"]) == 2
    with pytest.raises(BadRequest, match="source"):
        ExportFilter.parse({"source": "tools", "job": "ops:build"})
    with pytest.raises(BadRequest, match="source"):
        ExportFilter.parse({"source": "Not A Name"})


def test_chunks_stay_near_their_size_with_artifacts_listed(sqlite_store):
    """An artifact's file size once reset the chunk's byte count, so chunks grew without bound."""
    from flwd_server.store.export import CHUNK_BYTES

    fill(sqlite_store, 300, events_per_run=20)

    def op(conn: sqlite3.Connection) -> None:
        conn.executemany(
            "INSERT INTO artifacts(run_id, path, sha256, size) VALUES (?, 'a.txt', ?, 1)",
            [(f"run-{i:06d}", "0" * 64) for i in range(300)],
        )

    sqlite_store.write(op)
    chunks = list(export_lines(sqlite_store, ExportFilter.parse({})))
    body = b"".join(chunks)
    assert body.count(b'"record":"artifact"') == 300
    one_run = max(len(line) for line in body.splitlines()) * 25  # a run's lines: itself, 20 events, its artifact
    assert max(len(chunk) for chunk in chunks) <= CHUNK_BYTES + one_run
