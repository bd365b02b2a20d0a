"""Who claims a run: the process that queued it, at once; another only when it has a reason or the first does not.

Two engines on one data dir stand for two worker processes (each its own owner id, store,
writer, event poller and dispatcher), as in a server with two workers.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from flwd_server.auth.bearer import SCOPES
from flwd_server.engine import Engine
from flwd_server.models import EventType, Principal, RunStatus
from flwd_server.planner import PlanRequest
from flwd_server.runs import runner as runner_module
from flwd_server.store.owners import owner_id
from tests.fixtures.helpers import wait_until

ADMIN = Principal("alice", frozenset(SCOPES))


@pytest.fixture
def gate(tmp_path: Path) -> Path:
    return tmp_path / "gate"


@pytest.fixture
def limit() -> int:
    return 1  # max_concurrent_runs (a test parametrizes it)


@pytest.fixture
def workers(make_settings: Any, tmp_path: Path, gate: Path, limit: int) -> Iterator[tuple[Engine, Engine]]:
    folder = tmp_path / "src" / "jobs"
    folder.mkdir(parents=True)
    (folder / "quick.yaml").write_text("name: quick\nsteps:\n  - run: 'echo hi'\n")
    (folder / "held.yaml").write_text(f"name: held\nsteps:\n  - run: 'while [ ! -e {gate} ]; do sleep 0.02; done'\n")
    settings = make_settings(
        sources=[{"type": "local", "name": "t", "path": str(tmp_path / "src")}],
        limits={"max_concurrent_runs": limit},
        **{"sse.poll_interval": 0.01},
    )
    a, b = Engine(settings), Engine(settings)
    b.runner.owner = f"{owner_id()}:b"  # one process here; two in a server
    a.start()
    b.start()
    for engine in (a, b):  # the claim each makes at start is done: it cannot take the tests' first runs
        wait_until(lambda engine=engine: engine.runner.claims[0] >= 1, 10, message="the claim at start")
    yield a, b
    a.close(grace=0)
    b.close(grace=0)


def owner_of(engine: Engine, run_id: str) -> str:
    started = [e for e in engine.store.iter_events(run_id) if e.type == EventType.RUN_STARTED.value]
    return started[0].data["owner"]


def ended(engine: Engine, run_id: str) -> Any:
    return wait_until(
        lambda: (run := engine.run(run_id)).status.is_terminal and run, 20, message=f"run {run_id} to end"
    )


def test_the_process_that_queues_a_run_claims_it_and_the_other_writes_no_claim(workers, monkeypatch):
    # A grace longer than a loaded machine could delay a's claim: b must not claim because it is its turn.
    monkeypatch.setattr(runner_module, "HANDOFF_GRACE", 30.0)
    a, b = workers
    before, mine = list(b.runner.claims), list(a.runner.claims)
    for _ in range(10):
        run, _ = a.submit(PlanRequest("t:quick", {}), ADMIN)
        assert ended(a, run.id).status is RunStatus.SUCCEEDED
        assert owner_of(a, run.id) == a.runner.owner
        # Its end handled before the next run is queued (else the end's claim may take the next run first).
        wait_until(lambda: a.runner.active_count() == 0 and not a.runner._freed, 10, message="a's slot free")
    assert b.runner.claims == before  # woken by every run.queued and run.finished, it only read
    # One claim a run, none empty: a run's end claims only if something is queued.
    assert [now - then for now, then in zip(a.runner.claims, mine, strict=True)] == [10, 0]


def test_a_run_queued_while_its_process_is_full_starts_on_the_other_once_a_slot_frees(workers, gate):
    a, b = workers
    held, _ = a.submit(PlanRequest("t:held", {}), ADMIN)
    wait_until(lambda: a.run(held.id).status is RunStatus.RUNNING, 20, message="the held run to start")
    waiting, _ = a.submit(PlanRequest("t:quick", {}), ADMIN)  # max_concurrent_runs: 1, so it waits
    assert a.run(waiting.id).status is RunStatus.QUEUED
    a.runner.stop_claiming()  # a is going away: it takes nothing more, b has no reason of its own
    gate.touch()
    assert ended(a, held.id).status is RunStatus.SUCCEEDED
    assert ended(b, waiting.id).status is RunStatus.SUCCEEDED
    assert owner_of(b, waiting.id) == b.runner.owner


@pytest.mark.parametrize("limit", [3])
def test_a_process_whose_run_ended_refills_its_own_slot_not_every_free_one(workers, tmp_path, monkeypatch):
    """Else one process ends up with every run once submissions stop (one Python for what two ran)."""
    monkeypatch.setattr(runner_module, "HANDOFF_GRACE", 30.0)  # no fallback claim during the test
    a, b = workers
    folder = tmp_path / "src" / "jobs"
    for name in ("a", "b", "q"):
        gate = tmp_path / f"gate-{name}"
        (folder / f"held-{name}.yaml").write_text(
            f"name: held-{name}\nsteps:\n  - run: 'while [ ! -e {gate} ]; do sleep 0.02; done'\n"
        )
    running = lambda engine, run: engine.run(run.id).status is RunStatus.RUNNING  # noqa: E731
    hb, _ = b.submit(PlanRequest("t:held-b", {}), ADMIN)
    wait_until(lambda: running(b, hb), 20, message="b's run to start")
    ha = [a.submit(PlanRequest("t:held-a", {}), ADMIN)[0] for _ in range(2)]
    wait_until(lambda: all(running(a, run) for run in ha), 20, message="a's runs to start")
    queued = [a.submit(PlanRequest("t:held-q", {}), ADMIN)[0] for _ in range(2)]  # all three slots taken
    a.runner.stop_claiming()  # a's slots will stay free: nobody's to refill
    (tmp_path / "gate-a").touch()
    for run in ha:
        ended(a, run.id)
    (tmp_path / "gate-b").touch()
    wait_until(lambda: any(running(b, run) for run in queued), 20, message="b to refill its slot")
    # One claim transaction took whatever it took: had it taken both, both would be running now.
    states = [(b.run(run.id).status.value, b.run(run.id).reason) for run in queued]
    assert sorted(status for status, _ in states) == ["queued", "running"], states
    (tmp_path / "gate-q").touch()


@pytest.mark.parametrize("situation", ["draining", "read not due yet"])
def test_a_run_left_to_another_process_never_makes_the_dispatcher_spin(workers, situation):
    """A deferral whose grace has passed, in a process that will not claim now (it drains, or its
    next read of the queue is not due), must not turn the loop's timeout to 0 (before: 105,619
    iterations in 0.6 s)."""
    _, b = workers
    runner = b.runner
    now = time.monotonic()
    if situation == "draining":
        runner.stop_claiming()
    else:
        runner._next_read = now + 0.3
    runner._deferred = ("01someoneelsesrun", now - 1.0)
    assert runner._next_wait(now) >= (1.0 if situation == "draining" else 0.29)
