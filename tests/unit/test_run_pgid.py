"""A running run's process group is stored only where no cgroup holds the run.

Only the lost-run sweep reads it; a run's cgroup holds every process of the run, and the sweep
of a dead process's groups kills them (tests/integration/test_execution.py kills a server mid-run).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from flwd_server.auth.bearer import SCOPES
from flwd_server.engine import Engine
from flwd_server.models import EventType, Principal
from flwd_server.planner import PlanRequest
from flwd_server.runs.cgroups import discover
from tests.fixtures.helpers import missing, wait_until

ADMIN = Principal("alice", frozenset(SCOPES))


@pytest.mark.parametrize("cgroups", [True, False], ids=["cgroup", "no-cgroup"])
def test_the_pgid_is_stored_only_for_a_run_without_a_cgroup(make_settings: Any, tmp_path: Path, cgroups: bool) -> None:
    if cgroups and not discover().usable:
        missing("no usable cgroup v2 hierarchy here (the tests run as root on a cgroup2 host)")
    folder = tmp_path / "src" / "jobs"
    folder.mkdir(parents=True)
    (folder / "slow.yaml").write_text("name: slow\nsteps:\n  - run: 'echo started; sleep 60'\n")
    settings = make_settings(
        sources=[{"type": "local", "name": "t", "path": str(tmp_path / "src")}],
        policy={"cgroups": cgroups},
        **{"sse.poll_interval": 0.01},
    )
    engine = Engine(settings)
    try:
        run, _ = engine.submit(PlanRequest("t:slow", {}), ADMIN)
        wait_until(
            lambda: any(e.type == EventType.STEP_OUTPUT.value for e in engine.store.iter_events(run.id)),
            20,
            message="the step to print",
        )
        engine.store.flush()
        pgid = engine.store.reader().execute("SELECT pgid FROM runs WHERE id = ?", (run.id,)).fetchone()[0]
        assert (pgid is None) is cgroups
    finally:
        engine.close(grace=0)
