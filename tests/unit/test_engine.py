"""The engine end to end in one process: the code path the CLI's local runs take."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import pytest

from flwd_server.auth.bearer import SCOPES
from flwd_server.engine import Engine
from flwd_server.errors import PolicyDenied
from flwd_server.models import Principal, Profile
from flwd_server.planner import PlanRequest, plan_record
from flwd_server.store.event_filter import EventFilter
from tests.fixtures.helpers import wait_until

ADMIN = Principal("alice", frozenset(SCOPES))
NO_DOWNGRADE = Principal("bob", frozenset(SCOPES) - {"runs:downgrade"})


def write_job(folder, name, text):
    (folder / "jobs").mkdir(parents=True, exist_ok=True)
    (folder / "jobs" / f"{name}.yaml").write_text(text)


def finished(engine, run_id):
    return wait_until(
        lambda: (run := engine.run(run_id)).status.is_terminal and run, 20, message=f"run {run_id} to end"
    )


def events(engine, run_id):
    return list(engine.store.iter_events(run_id))


@pytest.fixture
def jobs_dir(tmp_path):
    folder = tmp_path / "src"
    write_job(folder, "env", "name: env\nsteps:\n  - run: 'env | sort'\n")
    write_job(
        folder, "hostenv", "name: hostenv\nrequires: [host-env]\nsteps:\n  - run: 'echo \"secret=$SERVER_SECRET\"'\n"
    )
    return folder


@pytest.fixture
def eng(make_settings, jobs_dir):
    engine = Engine(
        make_settings(sources=[{"type": "local", "name": "t", "path": str(jobs_dir)}], **{"sse.poll_interval": 0.01})
    )
    yield engine
    engine.close(grace=0)


def test_a_local_run_goes_through_the_same_engine(eng):
    run, replayed = eng.submit(PlanRequest("hello-world", {"name": "Alice", "times": 2}), ADMIN)
    assert not replayed and run.status.value == "queued"
    done = finished(eng, run.id)
    assert done.status.value == "succeeded" and done.exit_code == 0 and done.submitted_by == "alice"
    kinds = [e.type for e in events(eng, run.id)]
    assert kinds[0] == "run.queued" and kinds[-1] == "run.finished"
    assert [e.data["line"] for e in events(eng, run.id) if e.type == "step.output"] == ["Hello, Alice", "Hello, Alice"]


def test_under_secure_a_step_cannot_see_the_servers_secrets(eng, monkeypatch):
    monkeypatch.setenv("SERVER_SECRET", "s3cr3t-value")
    run, _ = eng.submit(PlanRequest("t:env", {}), ADMIN)
    finished(eng, run.id)
    output = "\n".join(e.data["line"] for e in events(eng, run.id) if e.type == "step.output")
    assert "s3cr3t-value" not in output
    names = {line.split("=", 1)[0] for line in output.splitlines()}
    assert names <= {"PATH", "HOME", "LANG", "PYTHONUNBUFFERED", "PWD", "SHLVL", "_"} | {
        n for n in names if n.startswith("FLWD_")
    }
    assert f"FLWD_RUN_ID={run.id}" in output


def test_a_job_asking_for_the_host_environment_is_rejected_under_secure_before_any_process(eng, monkeypatch):
    monkeypatch.setenv("SERVER_SECRET", "s3cr3t-value")
    run, _ = eng.submit(PlanRequest("t:hostenv", {}), ADMIN)
    assert run.status.value == "rejected" and "host-env" in run.reason
    kinds = [e.type for e in events(eng, run.id)]
    assert "step.started" not in kinds and kinds[-1] == "run.finished"
    assert any(e.type == "policy.decision" and e.data["outcome"] == "deny" for e in events(eng, run.id))


def test_a_granted_downgrade_runs_with_a_warning_and_says_who_asked(eng, monkeypatch):
    monkeypatch.setenv("SERVER_SECRET", "s3cr3t-value")
    run, _ = eng.submit(PlanRequest("t:hostenv", {}, profile=Profile.PERMISSIVE), ADMIN)
    done = finished(eng, run.id)
    assert done.status.value == "succeeded" and done.profile == "permissive"
    evs = events(eng, run.id)
    downgrade = next(e for e in evs if e.type == "policy.profile_downgrade")
    assert downgrade.data | {"granted": True} == downgrade.data and downgrade.data["subject"] == "alice"
    assert (downgrade.data["from"], downgrade.data["to"]) == ("secure", "permissive")
    assert any(
        e.type == "policy.decision" and e.data["check"] == "host-env" and e.data["outcome"] == "warn" for e in evs
    )
    assert "secret=s3cr3t-value" in [e.data["line"] for e in evs if e.type == "step.output"]


def test_a_refused_downgrade_is_an_event_and_nothing_runs(eng):
    before = len(eng.runs()[0])
    with pytest.raises(PolicyDenied, match="runs:downgrade"):
        eng.submit(PlanRequest("t:env", {}, profile=Profile.DISABLED), NO_DOWNGRADE)
    assert len(eng.runs()[0]) == before
    refusal = [e for e in eng.store.events_after(0) if e.type == "policy.profile_downgrade"][-1]
    assert refusal.run_id is None and refusal.data["granted"] is False and refusal.data["subject"] == "bob"
    assert EventFilter.parse({"source": "t"}).matches(refusal)  # GET /events?source=t shows it


def test_decisions_are_structured_log_lines(eng, caplog):
    caplog.set_level("INFO", logger="flwd.decisions")
    run, _ = eng.submit(PlanRequest("t:hostenv", {}), ADMIN)
    record = next(r for r in caplog.records if getattr(r, "check", None) == "host-env")
    assert (record.run_id, record.outcome) == (run.id, "deny") and record.reason


def test_an_engine_built_before_a_fork_runs_jobs_in_the_child(make_settings):
    """gunicorn --preload: the app and its engine exist before the fork; the child must not reuse
    the parent's pool, dispatcher or connections (threads do not survive a fork).  The parent's threads are idle at
    the fork, as they are in gunicorn's master."""
    engine = Engine(make_settings(**{"sse.poll_interval": 0.01}))
    engine.runner._pool = parent_pool = ThreadPoolExecutor(max_workers=1)  # as if created at import
    engine.store.reader()
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        try:
            fresh = engine.runner._pool is None
            run, _ = engine.submit(PlanRequest("hello-world", {"name": "Child"}), ADMIN)
            done = wait_until(lambda: (r := engine.run(run.id)).status.is_terminal and r, 10)
            new_pool = engine.runner._pool is not None and engine.runner._pool is not parent_pool
            os.write(write, f"{fresh} {new_pool} {done.status.value}".encode())
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
    assert os.read(read, 100) == b"True True succeeded"
    parent_pool.shutdown()
    engine.close(grace=0)


def test_runs_claimed_while_the_pool_shuts_down_go_back_to_the_queue(eng):
    plan = eng.planner.plan(PlanRequest("hello-world", {"name": "Late"}), ADMIN)
    run, _ = eng.store.create_run(plan=plan_record(plan), public=plan.to_dict(), submitted_by="alice")
    eng.runner._pool = ThreadPoolExecutor(max_workers=1)
    eng.runner._pool.shutdown(wait=True)  # as at interpreter exit: submit() now raises
    eng.runner._claim()  # the dispatcher is not running: this is the only claimer
    again = eng.run(run.id)
    assert (again.status.value, again.started_at) == ("queued", None) and run.id not in eng.runner._active


def test_a_plan_reads_the_registered_sources_once(eng):
    reads = []
    refresh = eng.catalog.before_read
    eng.catalog.before_read = lambda: (reads.append(1), refresh())[1]
    plan = eng.plan(PlanRequest("t:env", {}), ADMIN)
    assert len(reads) == 1  # resolving the job; policy judges it by the source read then
    assert {d.check for d in plan.decisions} >= {"host-env"}
