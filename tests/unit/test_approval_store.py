"""Runs awaiting approval in the store, on SQLite and PostgreSQL: not finished, never claimed or pruned,
expired once, and an approval racing a denial in two processes leaves exactly one outcome."""

from __future__ import annotations

import multiprocessing

import pytest

from flwd_server.errors import AlreadyApproved, ApprovalMismatch, InvalidJob, NotAwaitingApproval
from flwd_server.jobs.files import parse_job
from flwd_server.models import RunStatus
from flwd_server.store import Store
from tests.fixtures.postgres import open_backend

DIGEST = "sha256:" + "ab" * 32


def awaiting_run(store: Store, secret: str | None = None) -> str:
    plan = {
        "job": {"name": "j", "source": "s", "steps": [], "approval": {"required": 2}},
        "args": {"token": secret} if secret else {},
        "secret_args": ["token"] if secret else [],
        "profile": "secure",
        "digest": DIGEST,
    }
    public = {"job": "j", "source": "s", "revision": None, "args": {}, "profile": "secure", "digest": DIGEST}
    run, _ = store.create_run(
        plan=plan,
        public=public,
        submitted_by="alice",
        status=RunStatus.AWAITING_APPROVAL,
        initial_events=[("run.queued", {}), ("run.approval_requested", {"required": 2, "digest": DIGEST})],
    )
    return run.id


def finished_events(store: Store, run_id: str) -> list[dict]:
    return [e.data for e in store.events_after(0, run_id) if e.type == "run.finished"]


def test_a_waiting_run_is_neither_claimed_nor_pruned(store):
    waiting = awaiting_run(store)
    queued = store.create_run(
        plan={"job": {"name": "j", "source": "s", "steps": []}, "args": {}, "profile": "secure"},
        public={"job": "j", "source": "s", "revision": None, "args": {}, "profile": "secure", "digest": None},
        submitted_by="t",
    )[0].id
    assert [c.run.id for c in store.claim("me", 10, 10)] == [queued]
    store.finish_run(queued, RunStatus.SUCCEEDED)
    assert store.prune(0) == 1  # every finished run goes, the waiting one stays
    assert store.get_run(waiting).status is RunStatus.AWAITING_APPROVAL
    assert store.count_runs() == {"awaiting_approval": 1}


def test_approvals_count_distinct_people_of_the_plan_digest_then_release(store):
    run_id = awaiting_run(store)
    with pytest.raises(ApprovalMismatch) as caught:
        store.approve_run(run_id, "bob", "sha256:" + "00" * 32, 2, None, None)
    assert caught.value.extra == {"approved": "sha256:" + "00" * 32, "plan_digest": DIGEST}
    run, count = store.approve_run(run_id, "bob", DIGEST, 2, None, None)
    assert (run.status, count) == (RunStatus.AWAITING_APPROVAL, 1)
    with pytest.raises(AlreadyApproved):
        store.approve_run(run_id, "bob", DIGEST, 2, None, None)
    run, count = store.approve_run(run_id, "carol", DIGEST, 2, None, None)
    assert (run.status, count) == (RunStatus.QUEUED, 2)
    assert [c.run.id for c in store.claim("me", 10, 10)] == [run_id]
    with pytest.raises(NotAwaitingApproval):
        store.deny_run(run_id, "dave", "too late")


def test_a_changed_source_rejects_at_the_last_approval_and_scrubs_secrets(store):
    run_id = awaiting_run(store, secret="s3cret")
    store.approve_run(run_id, "bob", DIGEST, 2, "source moved", None)  # not the last: still waiting
    run, _ = store.approve_run(run_id, "carol", DIGEST, 2, "source moved", None)
    assert run.status is RunStatus.REJECTED and run.reason == "changed since approval: source moved"
    assert "s3cret" not in str(store.run_plan(run_id))
    assert finished_events(store, run_id)[0]["reason"] == "changed since approval: source moved"


def test_expiry_ends_each_waiting_run_once(store):
    run_id = awaiting_run(store, secret="s3cret")
    assert store.expire_approvals(3600) == []
    assert store.expire_approvals(0) == [run_id]
    assert store.expire_approvals(0) == []  # another node's sweeper finds nothing left
    run = store.get_run(run_id)
    assert run.status is RunStatus.REJECTED and "policy.approval_timeout" in run.reason
    assert len(finished_events(store, run_id)) == 1
    assert "s3cret" not in str(store.run_plan(run_id))


def _decide(spec, run_id, action, start, results):
    store = open_backend(spec)
    start.wait(30)
    try:
        if action == "approve":
            store.approve_run(run_id, "bob", DIGEST, 1, None, None)
        else:
            store.deny_run(run_id, "carol", "no")
        results.put((action, "ok"))
    except NotAwaitingApproval:
        results.put((action, "409"))
    finally:
        store.close()


def test_an_approval_and_a_denial_racing_in_two_processes_leave_one_outcome(store, store_spec):
    ctx = multiprocessing.get_context("fork")
    for _ in range(5):
        run_id = awaiting_run(store)
        start, results = ctx.Event(), ctx.Queue()
        procs = [ctx.Process(target=_decide, args=(store_spec, run_id, a, start, results)) for a in ("approve", "deny")]
        for p in procs:
            p.start()
        start.set()
        outcomes = dict(results.get(timeout=60) for _ in procs)
        for p in procs:
            p.join(30)
        assert sorted(outcomes.values()) == ["409", "ok"], outcomes
        status = store.get_run(run_id).status
        assert status is (RunStatus.QUEUED if outcomes["approve"] == "ok" else RunStatus.REJECTED)
        types = [e.type for e in store.events_after(0, run_id)]
        assert types.count("run.approved") == (outcomes["approve"] == "ok")
        assert types.count("run.finished") == (outcomes["deny"] == "ok")


@pytest.mark.parametrize(
    "text,message",
    [
        ("approval: {required: 0}", "at least 1"),
        ("approval: {required: two}", "at least 1"),
        ("approval: {required: true}", "at least 1"),
        ("approval: {required: 1.5}", "at least 1"),
        ("approval: yes", "expected a mapping"),
        ("approval: {required: 1, by: ops}", "unknown key"),
    ],
)
def test_a_bad_approval_key_is_named(text, message):
    with pytest.raises(InvalidJob) as caught:
        parse_job(f"name: j\n{text}\nsteps:\n  - run: echo\n", "s", "jobs/j.yaml")
    assert any(e["field"].startswith("approval") and message in e["message"] for e in caught.value.errors)


@pytest.mark.parametrize(
    "text,required", [("", 0), ("approval:", 1), ("approval: {}", 1), ("approval: {required: 3}", 3)]
)
def test_the_approval_key_gives_the_approvers_needed(text, required):
    job = parse_job(f"name: j\n{text}\nsteps:\n  - run: echo\n", "s", "jobs/j.yaml")
    assert job.approvals == required
    assert job.summary().get("approval") == ({"required": required} if required else None)
