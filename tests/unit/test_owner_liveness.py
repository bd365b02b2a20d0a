"""Who owns a run, and when an owner counts as dead.

On this host a process is dead when its pid and start time no longer match (a zombie too:
PID 1 of a container without an init does not reap).  On another host only the heartbeat
tells: older than ``liveness_timeout``, the owner is dead, its runs end lost and their slots
are freed; the process, if it comes back, does not resurrect them.  Both backends."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

from flwd_server.engine import Engine
from flwd_server.models import Principal, RunStatus
from flwd_server.planner import PlanRequest
from flwd_server.store.owners import owner_id, owner_is_dead, recover_lost_runs
from tests.fixtures.helpers import processes_of_run, wait_until
from tests.unit.test_store import _plan, _public


def test_a_zombie_owner_counts_as_dead_and_a_live_one_as_alive():
    child = subprocess.Popen(["sleep", "0.3"])
    try:
        owner = owner_id(child.pid)
        assert not owner_is_dead(owner, "", child.pid, None)
        wait_until(
            lambda: Path(f"/proc/{child.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z",
            5,
            0.02,
            "the child to become a zombie",
        )
        assert owner_is_dead(owner, "", child.pid, None)
    finally:
        child.wait()
    assert owner_is_dead(owner, "", child.pid, None)


# -- another host: only the heartbeat tells (liveness_timeout) ---------------------------------


def test_an_owner_on_another_host_is_judged_by_its_heartbeat_alone():
    now = time.time()
    # pid 1 is alive here, but on another host a pid means nothing
    assert not owner_is_dead("db-2:1:100", "db-2", 1, now - 3, timeout=5)
    assert owner_is_dead("db-2:1:100", "db-2", 1, now - 6, timeout=5)
    assert owner_is_dead("db-2:1:100", "db-2", 1, None, timeout=5)


def test_runs_of_a_node_that_stopped_heartbeating_end_lost_and_free_their_slots(any_store):
    store = any_store
    ids = [store.create_run(plan=_plan(), public=_public(), submitted_by="t")[0].id for _ in range(3)]
    store.register_owner("node-b.example:4242:777", "node-b.example", 4242)  # a node on another host
    claimed = store.claim("node-b.example:4242:777", 2, 2)
    assert len(claimed) == 2 and store.claim("node-a", 5, 2) == []  # node B holds both slots

    assert recover_lost_runs(store, me="node-a", timeout=5) == []  # its heartbeat is fresh: alive
    assert store.count_runs()["running"] == 2

    old = time.time() - 6  # ...then node B went quiet for longer than liveness_timeout
    store.write(
        lambda conn: conn.execute(
            "UPDATE owners SET heartbeat_at = heartbeat_at - 6 WHERE owner = ?", ("node-b.example:4242:777",)
        )
    )
    lost = recover_lost_runs(store, me="node-a", timeout=5)
    assert sorted(lost) == sorted(c.run.id for c in claimed)
    for run_id in lost:
        run = store.get_run(run_id)
        assert run.status is RunStatus.LOST and "stopped" in run.reason and run.finished_at >= old
        assert [e.type for e in store.events_after(0, run_id)][-1] == "run.finished"
    assert [o[0] for o in store.owners()] == []  # the dead node's row is gone
    assert [c.run.id for c in store.claim("node-a", 5, 2)] == [ids[2]]  # the slots are free again

    # Node B comes back: its heartbeat finds no row, and its old runs stay lost.
    assert store.heartbeat("node-b.example:4242:777") is False
    assert not store.finish_run(lost[0], RunStatus.SUCCEEDED, exit_code=0)
    assert store.get_run(lost[0]).status is RunStatus.LOST


def test_a_run_queued_for_a_process_that_is_gone_ends_lost_and_nothing_else_does(any_store):
    """A local run is claimed only by the process it was queued for: if that process is gone, nothing ever would."""
    store = any_store
    gone = subprocess.Popen(["sleep", "60"])
    dead_owner = owner_id(gone.pid)
    gone.kill()
    gone.wait()

    def queue(affinity):
        return store.create_run(plan=_plan(), public=_public(), submitted_by="t", affinity=affinity)[0].id

    stranded = queue(dead_owner)
    mine = queue(owner_id())  # this process: alive
    starting = queue("node-b.example:4242:777")  # another host, not registered yet: its run is new
    shared = queue(None)
    assert recover_lost_runs(store, me="node-a", timeout=5) == [stranded]
    run = store.get_run(stranded)
    assert run.status is RunStatus.LOST and "stopped before it started" in run.reason
    assert [e.type for e in store.events_after(0, stranded)][-1] == "run.finished"
    assert [store.get_run(i).status for i in (mine, starting, shared)] == [RunStatus.QUEUED] * 3
    assert recover_lost_runs(store, me="node-a", timeout=5) == []


SLOW = "name: slow\nsteps:\n  - run: 'echo started; sleep 60'\n"


def test_a_process_declared_dead_stops_its_runs_and_comes_back_as_a_new_owner(make_settings, tmp_path):
    (tmp_path / "src" / "jobs").mkdir(parents=True)
    (tmp_path / "src" / "jobs" / "slow.yaml").write_text(SLOW)
    engine = Engine(
        make_settings(
            sources=[{"type": "local", "name": "t", "path": str(tmp_path / "src")}], **{"sse.poll_interval": 0.01}
        )
    )
    try:
        run, _ = engine.submit(PlanRequest("t:slow", {}), Principal("alice", frozenset({"runs:write"})))
        wait_until(lambda: processes_of_run(run.id), 20, message="the run's process")
        before = engine.runner.owner
        # Another node saw no heartbeat from this process for liveness_timeout (a paused VM, a cut network).
        engine.store.mark_lost(lambda owner, host, pid, beat: owner == before, "the process running it stopped")
        wait_until(lambda: engine.runner.owner != before, 20, message="the runner to notice and re-register")
        wait_until(lambda: processes_of_run(run.id) == [], 20, message="the lost run's processes to be stopped")
        assert engine.run(run.id).status is RunStatus.LOST  # not resurrected as cancelled or succeeded
        assert engine.runner.owner in [o[0] for o in engine.store.owners()]
        again, _ = engine.submit(PlanRequest("t:slow", {}), Principal("alice", frozenset({"runs:write"})))
        wait_until(
            lambda: engine.run(again.id).status is RunStatus.RUNNING, 20, message="a new run under the new owner"
        )
    finally:
        engine.close(grace=0)


def test_live_owners_are_counted_in_the_clock_their_heartbeats_are_written_in(any_store, monkeypatch):
    """The runner shares ``max_concurrent_runs`` among the live owners; a node whose clock is 100 s
    ahead of the database's must still count the others (it counted none: its own clock judged them)."""
    store = any_store
    for name in ("node-a", "node-b"):
        store.register_owner(name, f"{name}.example", 1)
    store.register_owner("node-c", "node-c.example", 1)
    store.write(lambda conn: conn.execute("UPDATE owners SET heartbeat_at = heartbeat_at - 60 WHERE owner = 'node-c'"))
    assert store.live_owner_count(30) == 2  # node-c went quiet 60 s ago
    monkeypatch.setattr(type(store), "DB_CLOCK", "0", raising=False)  # any clock: the skew is patched below
    skew = 100.0  # our clock minus the database's
    store.write(lambda conn: conn.execute("UPDATE owners SET heartbeat_at = heartbeat_at - ?", (skew,)))
    monkeypatch.setattr(store, "_clock_skew", lambda conn: skew)
    assert store.live_owner_count(30) == 2
