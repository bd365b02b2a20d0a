"""Concurrency groups in the store, on SQLite and PostgreSQL: the claim's limit and order,
reject and replace in the submission's transaction, and a queued run's place in line."""

from __future__ import annotations

import threading

import pytest

from flwd_server.models import RunStatus
from flwd_server.store import Store, queue


def _submit(store: Store, group: str | None = None, limit: int = 1, when_busy: str = "queue", job: str = "j"):
    plan = {"job": {"name": job, "source": "s", "steps": []}, "args": {}, "profile": "secure"}
    public = {"job": job, "source": "s", "revision": None, "args": {}, "profile": "secure", "digest": None}
    concurrency = None if group is None else (group, limit, when_busy)
    return store.create_run(
        plan=plan, public=public, submitted_by="t", initial_events=[("run.queued", {})], concurrency=concurrency
    )[0]


def _claim(store: Store, free: int = 10, most: int = 10, owner: str = "w1") -> list[str]:
    return [c.run.id for c in store.claim(owner, free, most)]


def _end(store: Store, run_id: str) -> None:
    assert store.finish_run(run_id, RunStatus.SUCCEEDED, exit_code=0)


def test_a_group_starts_no_more_than_its_limit_and_keeps_its_order(store):
    a = [_submit(store, "deploy-prod", limit=2).id for _ in range(4)]
    assert _claim(store) == a[:2]
    assert _claim(store) == []  # the group is full: nothing of it starts
    _end(store, a[0])
    assert _claim(store) == [a[2]]  # FIFO within the group
    _end(store, a[1])
    _end(store, a[2])
    assert _claim(store) == [a[3]]


def test_other_groups_and_ungrouped_runs_do_not_wait_behind_a_busy_group(store):
    busy = [_submit(store, "deploy-prod").id for _ in range(5)]
    other = _submit(store, "deploy-staging").id
    plain = _submit(store).id
    assert _claim(store, free=1, most=10) == [busy[0]]
    # The next four queued runs belong to the busy group: the claim skips them.
    assert _claim(store, free=1, most=10) == [other]
    assert _claim(store, free=1, most=10) == [plain]
    assert _claim(store) == []


def test_max_concurrent_runs_still_bounds_every_group(store):
    runs = [_submit(store, f"g{i}").id for i in range(4)]
    assert _claim(store, free=10, most=3) == runs[:3]
    assert _claim(store, free=10, most=3) == []


def test_concurrent_claims_never_exceed_the_group_limit(store):
    for _ in range(20):
        _submit(store, "one", limit=1)
        _submit(store)
    claimed: list[list[str]] = []
    barrier = threading.Barrier(4)

    def claimer(owner: str) -> None:
        barrier.wait()
        claimed.append(_claim(store, free=40, most=40, owner=owner))

    threads = [threading.Thread(target=claimer, args=(f"w{i}",)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    running = [store.get_run(run_id) for ids in claimed for run_id in ids]
    grouped = (
        store.reader()
        .execute("SELECT count(*) FROM runs WHERE concurrency_group = 'one' AND status = 'running'")
        .fetchone()[0]
    )
    assert grouped == 1
    assert len(running) == 21


def test_reject_refuses_a_run_when_running_and_queued_runs_fill_the_group(store):
    first = _submit(store, "deploy-prod", when_busy="reject")
    assert first.status is RunStatus.QUEUED  # queued, not yet running: it counts
    second = _submit(store, "deploy-prod", when_busy="reject")
    assert second.status is RunStatus.REJECTED
    assert second.reason == "concurrency group deploy-prod is busy (1 of 1 running or queued; when_busy: reject)"
    stored = store.get_run(second.id)
    assert stored.status is RunStatus.REJECTED and stored.finished_at is not None
    ends = [e for e in store.events_after(0, second.id) if e.type == "run.finished"]
    assert ends and ends[0].data["status"] == "rejected"
    _claim(store)
    _end(store, first.id)
    assert _submit(store, "deploy-prod", when_busy="reject").status is RunStatus.QUEUED


def test_reject_admits_exactly_limit_runs_when_submissions_race(store):
    outcomes: list[RunStatus] = []
    barrier = threading.Barrier(8)

    def submit() -> None:
        barrier.wait()
        outcomes.append(_submit(store, "race", limit=3, when_busy="reject").status)

    threads = [threading.Thread(target=submit) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert outcomes.count(RunStatus.QUEUED) == 3
    assert outcomes.count(RunStatus.REJECTED) == 5


def test_replace_cancels_queued_runs_and_asks_running_ones_to_stop(store):
    running = _submit(store, "deploy-prod")
    assert _claim(store) == [running.id]
    queued = _submit(store, "deploy-prod")
    other = _submit(store, "deploy-staging")
    new = _submit(store, "deploy-prod", when_busy="replace")
    assert new.status is RunStatus.QUEUED
    old = store.get_run(queued.id)
    assert old.status is RunStatus.CANCELLED and old.reason == f"replaced by {new.id}"
    assert store.cancel_requested([running.id, other.id]) == {running.id}
    assert store.get_run(other.id).status is RunStatus.QUEUED
    events = store.events_after(0, running.id)
    asked = [e.data for e in events if e.type == "run.cancel_requested"]
    assert asked == [{"by": "t", "reason": f"replaced by {new.id}"}]
    # The new run starts only once the old one has left 'running'.
    assert _claim(store) == [other.id]
    store.finish_run(running.id, RunStatus.CANCELLED, reason=f"replaced by {new.id}")
    assert _claim(store) == [new.id]


def test_replace_never_starts_the_new_run_beside_the_old_one_even_below_the_limit(store):
    """With ``limit: 2`` one old run leaves room, but the replacing run waits until it has ended."""
    running = _submit(store, "deploy", limit=2)
    assert _claim(store) == [running.id]
    new = _submit(store, "deploy", limit=2, when_busy="replace")
    assert store.cancel_requested([running.id]) == {running.id}
    assert _claim(store) == []
    assert _queue(store, [new.id])[new.id] == {
        "position": 1,
        "reason": "concurrency group deploy (1 of 2 running, one being stopped)",
    }
    store.finish_run(running.id, RunStatus.CANCELLED, reason=f"replaced by {new.id}")
    assert _claim(store) == [new.id]


def _queue(store: Store, run_ids: list[str], most: int = 10) -> dict[str, dict | None]:
    runs = store.queue_of([store.get_run(run_id) for run_id in run_ids], most)
    return {run.id: run.queue for run in runs}


def test_queue_position_and_reason_follow_the_claim_order(store):
    prod = [_submit(store, "deploy-prod").id for _ in range(3)]
    plain = _submit(store).id
    assert _claim(store, free=1) == [prod[0]]
    queue = _queue(store, [*prod, plain])
    assert queue[prod[0]] is None  # running: no queue
    # deploy-prod is full: its runs wait for it, in their order; the plain run is next.
    assert queue[prod[1]] == {"position": 1, "reason": "concurrency group deploy-prod (1 of 1 running)"}
    assert queue[prod[2]] == {"position": 2, "reason": "concurrency group deploy-prod (1 of 1 running)"}
    assert queue[plain] == {"position": 1, "reason": "waiting to be claimed"}
    # One at a time, one page or one run: the same answers.
    assert _queue(store, [prod[2]]) == {prod[2]: queue[prod[2]]}
    assert _queue(store, [plain]) == {plain: queue[plain]}
    more = _submit(store).id
    assert _queue(store, [more], most=1)[more] == {"position": 2, "reason": "max_concurrent_runs (1 running)"}
    _end(store, prod[0])
    queue = _queue(store, [*prod[1:], plain, more])
    assert [queue[r]["position"] for r in (*prod[1:], plain, more)] == [1, 2, 3, 4]
    assert queue[prod[1]]["reason"] == "waiting to be claimed"


@pytest.fixture(params=["group heads", "queue scan"])
def strategy(request, monkeypatch):
    """Both ways a claim steps over a full group: by each group's head, or (many groups) a scan in order."""
    if request.param == "queue scan":
        monkeypatch.setattr(queue, "MAX_HEAD_GROUPS", 1)
    return request.param


def test_a_claim_steps_over_full_groups_either_way_in_queue_order(store, strategy):
    a = [_submit(store, "a").id for _ in range(3)]
    b = [_submit(store, "b", limit=2).id for _ in range(3)]
    plain = _submit(store).id
    c = _submit(store, "c").id
    assert _claim(store, free=1) == [a[0]]
    # a is full: b's first two (its limit), the plain run and c, oldest first; b's third waits.
    assert _claim(store, free=10) == [*b[:2], plain, c]
    assert _claim(store, free=10) == []
    _end(store, b[0])
    assert _claim(store, free=10) == [b[2]]


def test_a_claim_leaves_runs_bound_to_another_owner(store, strategy):
    busy = [_submit(store, "a").id for _ in range(2)]
    assert _claim(store, free=1) == [busy[0]]
    plan = {"job": {"name": "j", "source": "s", "steps": []}, "args": {}, "profile": "secure"}
    public = {"job": "j", "source": "s", "revision": None, "args": {}, "profile": "secure", "digest": None}
    bound = store.create_run(
        plan=plan, public=public, submitted_by="t", affinity="cli:1", concurrency=("b", 1, "queue")
    )
    free = _submit(store, "b").id
    assert _claim(store, free=1) == [free]  # the bound run is older, but only its owner claims it
    assert [c.run.id for c in store.claim("cli:1", 1, 10, affinity_only=True)] == []  # b is full now
    _end(store, free)
    assert [c.run.id for c in store.claim("cli:1", 1, 10, affinity_only=True)] == [bound[0].id]


def test_a_run_awaiting_approval_has_no_position_but_says_why(store):
    plan = {"job": {"name": "j", "source": "s", "steps": []}, "args": {}, "profile": "secure"}
    public = {"job": "j", "source": "s", "revision": None, "args": {}, "profile": "secure", "digest": None}
    waiting, _ = store.create_run(plan=plan, public=public, submitted_by="t", status=RunStatus.AWAITING_APPROVAL)
    queued = _submit(store)
    queue = _queue(store, [waiting.id, queued.id])
    assert queue[waiting.id] == {"position": None, "reason": "awaiting approval"}
    assert queue[queued.id] == {"position": 1, "reason": "waiting to be claimed"}  # not behind the waiting run


@pytest.mark.parametrize("when_busy", ["reject", "replace"])
def test_an_approved_run_meets_its_groups_when_busy_as_it_enters_the_queue(store, when_busy):
    """Approval is when the run would start waiting: a busy group rejects it then, or has its runs replaced."""
    digest = "sha256:" + "cd" * 32
    plan = {"job": {"name": "j", "source": "s", "steps": []}, "args": {}, "profile": "secure", "digest": digest}
    public = {"job": "j", "source": "s", "revision": None, "args": {}, "profile": "secure", "digest": digest}
    waiting, _ = store.create_run(
        plan=plan,
        public=public,
        submitted_by="alice",
        status=RunStatus.AWAITING_APPROVAL,
        concurrency=("deploy", 1, when_busy),
    )
    running = _submit(store, "deploy", 1, "queue")
    assert _claim(store) == [running.id]
    released, _ = store.approve_run(waiting.id, "bob", digest, 1, None, None, when_busy)
    if when_busy == "reject":
        assert released.status is RunStatus.REJECTED
        assert "concurrency group deploy is busy" in released.reason
        assert not store.get_run(running.id).status.is_terminal
    else:
        assert released.status is RunStatus.QUEUED
        assert store.cancel_requested([running.id]) == {running.id}
        assert _claim(store) == []  # not before the replaced run has ended
        _end(store, running.id)
        assert _claim(store) == [waiting.id]


def test_runs_ended_by_replace_or_reject_keep_no_secret_value(store):
    """Every way a run ends drops its secret argument values from the stored plan."""

    def submit(when_busy: str):
        plan = {
            "job": {"name": "j", "source": "s", "steps": []},
            "args": {"token": "hunter2-secret"},
            "secret_args": ["token"],
            "profile": "secure",
        }
        public = {"job": "j", "source": "s", "revision": None, "args": {"token": "***"}, "profile": "secure"}
        return store.create_run(plan=plan, public=public, submitted_by="t", concurrency=("g", 1, when_busy))[0]

    running = submit("queue")
    assert _claim(store) == [running.id]
    queued = submit("queue")
    refused = submit("reject")
    assert refused.status is RunStatus.REJECTED
    submit("replace")
    assert store.get_run(queued.id).status is RunStatus.CANCELLED
    for ended in (queued.id, refused.id):
        assert store.run_plan(ended)["args"] == {"token": "***"}, ended
    assert store.run_plan(running.id)["args"] == {"token": "hunter2-secret"}  # still running: it needs it
