"""Callback deliveries in the store, on SQLite and PostgreSQL: due when the run ends, however it ends;
claimed by one owner at a time (a lease), across threads and processes; every attempt an event."""

from __future__ import annotations

import threading
import time

from flwd_server.models import RunStatus
from flwd_server.store.deliveries import Delivery
from tests.fixtures.helpers import results_of_processes
from tests.fixtures.postgres import open_backend

URL = "https://hooks.example.org/ci?token=t0ps3cret"


def _plan():
    return {"job": {"name": "j", "source": "s", "steps": []}, "args": {}, "profile": "secure"}


def _public():
    return {"job": "j", "source": "s", "revision": None, "args": {}, "profile": "secure", "digest": None}


def with_callback(store, status=RunStatus.QUEUED):
    run, _ = store.create_run(plan=_plan(), public=_public(), submitted_by="t", status=status, callback=URL)
    return run


def events(store, run_id, prefix="callback."):
    return [e for e in store.events_after(0, run_id) if e.type.startswith(prefix)]


def test_a_delivery_waits_for_its_run_then_is_leased_attempted_and_recorded(store):
    run = with_callback(store)
    assert run.callback == {
        "url": "https://hooks.example.org/ci?[redacted]",  # a query may carry a token: never shown
        "id": run.callback["id"],
        "state": "waiting",
        "attempts": 0,
        "last_status": None,
    }
    assert store.get_run(run.id).callback == run.callback
    assert store.list_runs()[0][0].callback == run.callback
    assert store.claim_deliveries("a", 60) == []  # the run has not ended
    store.claim("node", 1, 10)
    store.finish_run(run.id, RunStatus.SUCCEEDED, exit_code=0)
    assert store.get_run(run.id).callback["state"] == "pending"

    first = store.claim_deliveries("a", 60)
    assert first == [Delivery(run.id, run.callback["id"], URL, 1)]  # the real URL, for the POST
    assert store.claim_deliveries("b", 60) == []  # leased to a
    store.record_attempt(first[0], "a", status=503, error=None, retry_at=time.time() - 1)
    assert store.get_run(run.id).callback | {"id": None} == {
        "url": "https://hooks.example.org/ci?[redacted]",
        "id": None,
        "state": "pending",
        "attempts": 1,
        "last_status": 503,
    }
    second = store.claim_deliveries("b", 60)
    assert [d.attempt for d in second] == [2]
    store.record_attempt(second[0], "b", status=204, error=None, retry_at=None)
    assert store.get_run(run.id).callback["state"] == "delivered"
    assert store.claim_deliveries("c", 60) == []
    recorded = [(e.type, e.data["attempt"], e.data["status"]) for e in events(store, run.id)]
    assert recorded == [("callback.failed", 1, 503), ("callback.delivered", 2, 204)]
    assert all("t0ps3cret" not in e.raw for e in store.events_after(0, run.id))


def test_a_failed_attempt_without_a_retry_gives_up(store):
    run = with_callback(store, RunStatus.REJECTED)  # rejected at submit: due at once
    [delivery] = store.claim_deliveries("a", 60)
    store.record_attempt(delivery, "a", status=None, error="ConnectionRefusedError", retry_at=None)
    assert store.get_run(run.id).callback["state"] == "failed"
    [failed] = events(store, run.id)
    assert failed.data["retry_in"] is None and failed.data["error"] == "ConnectionRefusedError"
    assert store.next_delivery_at() is None


def test_every_way_a_run_ends_makes_its_callback_due(store):
    cancelled = with_callback(store)
    store.request_cancel(cancelled.id, "someone")
    lost = with_callback(store)
    store.claim("gone-owner", 1, 10)
    store.mark_lost(lambda owner, *_: owner == "gone-owner", "the owner died")
    due = {d.run_id for d in store.claim_deliveries("a", 60, limit=10)}
    assert due == {cancelled.id, lost.id}


def test_an_expired_lease_is_claimed_by_another_owner(store):
    run = with_callback(store, RunStatus.REJECTED)
    assert len(store.claim_deliveries("a", -1)) == 1  # a's lease is already over (a died mid-attempt)
    again = store.claim_deliveries("b", 60)
    assert [(d.run_id, d.attempt) for d in again] == [(run.id, 1)]
    assert store.next_delivery_at() >= time.time() + 50  # b's lease: the next look is when it ends


def test_pruning_a_run_drops_its_delivery(store):
    run = with_callback(store, RunStatus.REJECTED)
    with_callback(store, RunStatus.REJECTED)
    assert store.prune(1) == 1
    rows = store.reader().execute("SELECT run_id FROM callback_deliveries").fetchall()
    assert run.id not in {r[0] for r in rows} and len(rows) == 1


def _claim_deliveries(backend, owner, results):
    store = open_backend(backend)
    got: list[str] = []
    lock = threading.Lock()

    def loop():
        while True:
            claimed = store.claim_deliveries(f"{owner}-{threading.get_ident()}", 600, limit=3)
            if not claimed:
                return
            with lock:
                got.extend(d.run_id for d in claimed)

    threads = [threading.Thread(target=loop) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    results.put(got)
    store.close()


def test_two_processes_with_six_threads_each_claim_each_delivery_exactly_once(store, store_spec):
    ids = [with_callback(store, RunStatus.REJECTED).id for _ in range(150)]
    claimed = sum(results_of_processes(_claim_deliveries, [(store_spec, f"p{i}") for i in range(2)]), [])
    assert sorted(claimed) == sorted(ids)
