"""The delivery thread in one process, against a real receiver on loopback: backoff, giving up, and a URL
dropped from the allow list after the run was submitted."""

from __future__ import annotations

from pathlib import Path

import pytest

from flwd_server.config import CallbackSettings
from flwd_server.models import RunStatus
from flwd_server.runs.callbacks import CallbackPolicy
from flwd_server.runs.delivery import MAX_BACKOFF, CallbackDeliverer, backoff_delay
from tests.fixtures.helpers import wait_until
from tests.fixtures.receiver import Receiver, signature_ok


def _run_with_callback(store, url: str) -> str:
    plan = {"job": {"name": "j", "source": "s", "steps": []}, "args": {}, "profile": "secure"}
    public = {"job": "j", "source": "s", "revision": None, "args": {}, "profile": "secure", "digest": None}
    run, _ = store.create_run(plan=plan, public=public, submitted_by="t", status=RunStatus.REJECTED, callback=url)
    return run.id


@pytest.fixture
def deliver(sqlite_store, tmp_path: Path):
    started: list[CallbackDeliverer] = []
    key = tmp_path / "key"
    key.write_text("k3y")

    def make(allowed: tuple[str, ...], **settings) -> CallbackDeliverer:
        policy = CallbackPolicy(CallbackSettings(allowed_urls=allowed, secret_file=str(key), **settings))
        view = lambda run_id: sqlite_store.get_run(run_id).to_dict()  # noqa: E731
        deliverer = CallbackDeliverer(sqlite_store, policy, view, lambda: "me")
        deliverer.start()
        started.append(deliverer)
        return deliverer

    yield make
    for deliverer in started:
        deliverer.close()


def state(store, run_id: str, wanted: str) -> dict:
    return wait_until(lambda: (c := store.get_run(run_id).callback)["state"] == wanted and c, 20, 0.02, wanted)


def test_failures_back_off_then_give_up_after_max_attempts(sqlite_store, deliver, receiver: Receiver):
    run_id = _run_with_callback(sqlite_store, receiver.script("/unit/down", 500))
    deliver((receiver.url + "/unit",), max_attempts=3, backoff=0.05)
    failed = state(sqlite_store, run_id, "failed")
    assert (failed["attempts"], failed["last_status"]) == (3, 500)
    arrived = receiver.at("/unit/down")
    assert len(arrived) == 3 and all(signature_ok(b"k3y", r.body, r.headers["X-Flwd-Signature-256"]) for r in arrived)
    gaps = [b.at - a.at for a, b in zip(arrived, arrived[1:], strict=False)]
    assert gaps[0] >= 0.025 and gaps[1] >= 0.05  # backoff * 2**(n-1), at least half of it with jitter


def test_a_url_no_longer_allowed_is_given_up_without_a_request(sqlite_store, deliver, receiver: Receiver):
    run_id = _run_with_callback(sqlite_store, receiver.script("/unit/dropped", 200))  # allowed when submitted
    deliver(("https://hooks.example.org/only",))
    failed = state(sqlite_store, run_id, "failed")
    assert failed["attempts"] == 1 and receiver.at("/unit/dropped") == []
    [event] = [e for e in sqlite_store.events_after(0, run_id) if e.type == "callback.failed"]
    assert event.data["error"] == "the URL is no longer under callbacks.allowed_urls"


def test_backoff_doubles_is_jittered_and_capped():
    for attempt, base in ((1, 5.0), (2, 10.0), (3, 20.0)):
        delays = {backoff_delay(5.0, attempt) for _ in range(50)}
        assert all(base / 2 <= d <= base for d in delays) and len(delays) > 1
    assert backoff_delay(5.0, 40) <= MAX_BACKOFF
