"""The audit trail's hash chains, on both backends: per run, across writers, after pruning, without a run."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from flwd_server.store.chain import GENESIS, event_hash, insert_events, run_link
from flwd_server.store.chain_verify import Tampered, verify_export
from flwd_server.store.export import ExportFilter, export_lines
from flwd_server.store.queries import EXPORT_HOLD, SET_META
from tests.fixtures.postgres import open_backend


def add_run(store: Any, run_id: str, status: str = "succeeded") -> None:
    store.write(
        lambda conn: conn.execute(
            "INSERT INTO runs(id, job, source, args, status, profile, submitted_by, created_at, plan) "
            "VALUES (?, 'build', 'ops', '{}', ?, 'secure', 'me', 1.5, '{}')",
            (run_id, status),
        )
    )


def queued_by_op(store: Any, run_id: str, type_: str) -> None:
    """An event inserted by an operation, in its transaction (as run.queued and run.cancel_requested are)."""
    store.write(lambda conn: insert_events(conn, [(run_id, type_, 1.25, '{"by":"me"}')]))


def stored(store: Any) -> list[tuple]:
    return store.reader().execute("SELECT id, run_id, type, ts, data, hash FROM events ORDER BY id").fetchall()


def check_chains(store: Any) -> None:
    """Recompute every chain from the stored rows, independently of the writer."""
    heads: dict[str | None, bytes] = {}
    for id, run_id, type_, ts, data, digest in stored(store):
        assert digest == event_hash(heads.get(run_id, GENESIS), id, run_id, type_, ts, data).hex(), (id, run_id, type_)
        heads[run_id] = bytes.fromhex(digest)


def export(store: Any) -> list[bytes]:
    return b"".join(export_lines(store, ExportFilter(), run_page=2, event_page=3)).splitlines(keepends=True)


def test_every_event_is_chained_to_the_previous_of_its_run(any_store):
    add_run(any_store, "r1")
    add_run(any_store, "r2")
    queued_by_op(any_store, "r1", "run.queued")
    for i in range(7):
        any_store.emit("r1", "step.output", {"line": f"é {i}", "n": 1.5})
        any_store.emit("r2", "step.output", {"line": f"two {i}"})
    any_store.emit(None, "source.synced", {"source": "ops"})
    queued_by_op(any_store, "r2", "run.cancel_requested")
    any_store.emit("r2", "run.finished", {"status": "cancelled"})
    any_store.flush()
    rows = stored(any_store)
    assert len(rows) == 18 and all(row[5] for row in rows)
    check_chains(any_store)
    assert verify_export(export(any_store))["events"] == 18


def test_a_chunk_of_output_larger_than_one_insert_statement_is_stored_whole_and_chained(any_store):
    add_run(any_store, "r1")
    add_run(any_store, "r2")
    rows = [("r1" if i % 3 else "r2", "step.output", 1000.0 + i, json.dumps({"line": f"l{i}"})) for i in range(257)]
    any_store.emit_rows(rows)  # SQLite inserts 100 rows to a statement: two full ones and a tail of 57
    any_store.emit("r1", "run.finished", {"status": "succeeded"})
    any_store.flush()
    got = stored(any_store)
    assert [(r[1], r[2], r[3], r[4]) for r in got[:257]] == rows
    assert [r[0] for r in got] == list(range(got[0][0], got[0][0] + 258))
    check_chains(any_store)
    assert verify_export(export(any_store))["events"] == 258


def test_two_writers_on_one_run_extend_one_chain(store_spec):
    """The API process's run.cancel_requested lands between the runner's events: the head comes from the database."""
    runner, api = open_backend(store_spec), open_backend(store_spec)
    try:
        runner.migrate()
        api.migrate()
        add_run(api, "r1", "running")
        queued_by_op(api, "r1", "run.queued")
        for round_ in range(3):
            for i in range(5):
                runner.emit("r1", "step.output", {"line": f"{round_}.{i}"})
            runner.flush()
            queued_by_op(api, "r1", "run.cancel_requested")
            api.emit(None, "source.synced", {"source": "ops"})
            api.flush()
        check_chains(runner)
        assert len(stored(runner)) == 1 + 3 * 7
        assert verify_export(export(runner))["events"] == 22
    finally:
        runner.close()
        api.close()


def test_pruning_whole_runs_leaves_the_rest_verifiable_and_records_what_went(any_store):
    for n in range(4):
        add_run(any_store, f"r{n}")
        for i in range(3):
            any_store.emit(f"r{n}", "step.output", {"line": str(i)})
        any_store.emit(None, "source.synced", {"source": "ops"})
    any_store.flush()
    heads = {run_id: digest for _, run_id, _, _, _, digest in stored(any_store) if run_id}
    assert any_store.prune(2) == 2
    any_store.emit(None, "source.synced", {"source": "ops"})
    any_store.flush()
    check_chains(any_store)
    pruned = [json.loads(row[4]) for row in stored(any_store) if row[2] == "runs.pruned"]
    assert pruned == [{"runs": [{"id": "r0", "hash": heads["r0"]}, {"id": "r1", "hash": heads["r1"]}]}]
    assert verify_export(export(any_store)) == {
        "runs": 2,
        "events": 6 + 4 + 1 + 1,
        "artifacts": 0,
        "lines": 1 + 2 + 12 + 1,
        "end": {"record": "end", "runs": 2, "events": 12, "artifacts": 0},
    }


def test_retention_waits_while_an_export_runs_so_the_export_verifies(any_store):
    """A prune between the export's header and its runs would cut runs out of the file's chains."""
    for n in range(4):
        add_run(any_store, f"r{n}")
        any_store.emit(f"r{n}", "step.output", {"line": "x"})
        any_store.emit(f"r{n}", "run.finished", {"status": "succeeded"})
    any_store.flush()
    lines = export_lines(any_store, ExportFilter(), run_page=1, event_page=3)
    header = next(lines)
    assert any_store.prune(0) == 0  # held off
    exported = b"".join([header, *lines]).splitlines(keepends=True)
    assert verify_export(exported)["runs"] == 4
    assert any_store.prune(0) == 4  # the export is over: retention goes on


def test_an_export_hold_lapses_by_itself(any_store):
    add_run(any_store, "r0")
    any_store.emit("r0", "run.finished", {"status": "succeeded"})
    any_store.flush()
    any_store.write(lambda conn: conn.execute(SET_META, (EXPORT_HOLD + "dead", repr(time.time() - 1))))
    assert any_store.prune(0) == 1  # an export that died holds nothing
    assert any_store.reader().execute("SELECT count(*) FROM meta WHERE key LIKE 'export_hold:%'").fetchone()[0] == 0


def test_the_events_without_a_run_have_their_own_chain_with_its_head_in_the_header(any_store):
    for i in range(4):
        any_store.emit(None, "source.synced", {"source": "ops", "n": i})
    any_store.flush()
    check_chains(any_store)
    lines = export(any_store)
    header = json.loads(lines[0])
    assert header["runless_hash"] == stored(any_store)[-1][5]
    verify_export(lines)
    # The last event without a run cut off: the header's head says one is missing.
    with pytest.raises(Tampered) as cut:
        verify_export([*lines[:-2], lines[-1].replace(b'"events":4', b'"events":3')])
    assert cut.value.line == 5


@pytest.mark.parametrize("how", ["edit", "delete", "insert", "reorder"])
def test_verification_names_the_first_line_that_was_tampered_with(sqlite_store, how):
    add_run(sqlite_store, "r1")
    for i in range(6):
        sqlite_store.emit("r1", "step.output", {"line": f"line {i}"})
    sqlite_store.flush()
    lines = export(sqlite_store)
    assert verify_export(lines)["events"] == 6
    bad = list(lines)  # line 1 the header, 2 the run, 3..8 its events, 9 the end
    if how == "edit":
        bad[4] = bad[4].replace(b"line 2", b"line X")
    elif how == "delete":
        del bad[4]
    elif how == "insert":
        bad.insert(4, bad[6])
    else:
        bad[4], bad[5] = bad[5], bad[4]
    with pytest.raises(Tampered) as caught:
        verify_export(bad)
    assert caught.value.line == 5, caught.value


def test_a_line_that_is_not_utf8_is_named_not_a_crash(sqlite_store):
    add_run(sqlite_store, "r1")
    sqlite_store.emit("r1", "step.output", {"line": "x"})
    sqlite_store.flush()
    bad = list(export(sqlite_store))
    bad[2] = b"\xff\xfe" + bad[2]
    with pytest.raises(Tampered) as caught:
        verify_export(bad)
    assert caught.value.line == 3 and "not an export record" in str(caught.value)


def test_finished_runs_form_a_chain_in_the_order_they_finish_and_survive_pruning(any_store):
    for n in range(4):
        add_run(any_store, f"r{n}")
        any_store.emit(f"r{n}", "step.output", {"line": "x"})
    for n in (2, 0, 3, 1):  # the order they finish, not the order they were made
        any_store.emit(f"r{n}", "run.finished", {"status": "succeeded"})
    any_store.flush()
    at_finish = {row[1]: row[5] for row in stored(any_store) if row[2] == "run.finished"}
    chain = any_store.reader().execute("SELECT run_id, run_hash, hash FROM run_chain ORDER BY seq").fetchall()
    head = GENESIS
    for run_id, run_hash, digest in chain:
        head = run_link(head, run_id, bytes.fromhex(run_hash))
        assert digest == head.hex() and run_hash == at_finish[run_id]
    assert [row[0] for row in chain] == ["r2", "r0", "r3", "r1"]
    lines = export(any_store)
    assert [json.loads(line)["run_id"] for line in lines if b'"record":"finished"' in line] == ["r2", "r0", "r3", "r1"]
    verify_export(lines)

    assert any_store.prune(2) == 2  # r0 and r1: their lines of the chain stay, the runs.pruned event names them
    lines = export(any_store)
    assert verify_export(lines)["runs"] == 2
    # A whole run cut out of the file (its run record and its events): the chain of finished runs says so.
    start = next(i for i, line in enumerate(lines) if b'"record":"run"' in line)
    cut = [*lines[:start], *lines[start + 3 :]]
    cut[-1] = cut[-1].replace(b'"runs":2,"events":7', b'"runs":1,"events":5')
    with pytest.raises(Tampered) as caught:
        verify_export(cut)
    named = next(i for i, line in enumerate(cut, 1) if b'"record":"finished","run_id":"r2"' in line)
    assert "is not in the export" in caught.value.reason and caught.value.line == named


def test_an_operation_that_fails_leaves_no_trace_in_the_chain(any_store):
    add_run(any_store, "r1")
    any_store.emit("r1", "step.output", {"line": "before"})

    def fails(conn: Any) -> None:
        insert_events(conn, [("r1", "run.finished", 2.0, "{}")])
        raise RuntimeError("this operation fails after writing an event")

    with pytest.raises(RuntimeError):
        any_store.write(fails)
    any_store.emit("r1", "step.output", {"line": "after"})
    any_store.emit("r1", "run.finished", {"status": "succeeded"})
    any_store.flush()
    assert [row[2] for row in stored(any_store)] == ["step.output", "step.output", "run.finished"]
    check_chains(any_store)
    assert any_store.reader().execute("SELECT count(*) FROM run_chain").fetchone()[0] == 1
    verify_export(export(any_store))


def test_every_event_is_stored_through_the_chain():
    """An INSERT INTO events anywhere else would store an event without a hash, breaking its chain."""
    root = Path(__file__).resolve().parents[2] / "flwd_server"
    allowed = {root / "store" / "chain.py", root / "store" / "postgres_sql.py"}
    elsewhere = [str(path.relative_to(root)) for path in root.rglob("*.py") if "INSERT INTO events" in path.read_text()]
    assert elsewhere and set(elsewhere) <= {str(p.relative_to(root)) for p in allowed}, elsewhere


def test_a_filtered_export_verifies_run_by_run_and_names_a_run_cut_short(any_store):
    """A filter leaves runs and events without a run out, so only the runs' own chains can be checked: they are."""
    add_run(any_store, "r1")
    any_store.write(lambda conn: conn.execute("UPDATE runs SET job = 'other' WHERE id = 'r1'"))
    add_run(any_store, "r2")
    for n in (1, 2):
        for i in range(4):
            any_store.emit(f"r{n}", "step.output", {"line": f"{n}.{i}"})
        any_store.emit(None, "source.synced", {"source": "ops"})
    any_store.flush()
    lines = b"".join(export_lines(any_store, ExportFilter(job="build"), event_page=2)).splitlines(keepends=True)
    header = json.loads(lines[0])
    assert "runless_hash" not in header and "finished_hash" not in header
    assert verify_export(lines)["runs"] == 1
    # The run's last event cut off (and the count fixed up): its run record's head says so.
    cut = [*lines[:-2], lines[-1].replace(b'"events":4', b'"events":3')]
    with pytest.raises(Tampered) as caught:
        verify_export(cut)
    assert caught.value.line == len(cut) and "does not end at its recorded head" in caught.value.reason
