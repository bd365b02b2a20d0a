"""Run callbacks against a real receiver on loopback: signed once delivered, retried after a 503 or a
timeout, a redirect never followed, refused outside the allow list, pending across a restart, and
delivered by the CLI's own process for a local run (attached or detached)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.helpers import cli, read_stream, wait_until
from tests.fixtures.receiver import HOLD, Receiver, signature_ok
from tests.fixtures.server import ServerProcess

pytestmark = pytest.mark.integration

SECRET = b"callback-k3y-never-shown"


RESULTS_JOB = """name: results
steps:
  - run: |
      echo "version=1.4.2" >> "$FLWD_OUTPUT"
      printf 'report' > "$FLWD_ARTIFACTS/report.txt"
"""


def callback_config(receiver: Receiver, secret_file: Path, **overrides: Any) -> dict[str, Any]:
    return {
        "callbacks": {
            "allowed_urls": [receiver.url + "/hooks"],
            "secret_file": str(secret_file),
            "max_attempts": 3,
            "backoff": 0.05,
            "request_timeout": 1.0,
            **overrides,
        }
    }


@pytest.fixture(scope="module")
def secret_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("secret") / "callback.key"
    path.write_bytes(SECRET + b"\n")
    return path


@pytest.fixture(scope="module")
def hooked(receiver: Receiver, secret_file: Path, tmp_path_factory: pytest.TempPathFactory):
    """One server (two workers, both with a delivery thread) for the tests that need no restart."""
    root = tmp_path_factory.mktemp("callbacks")
    (root / "src" / "jobs").mkdir(parents=True)
    (root / "src" / "jobs" / "results.yaml").write_text(RESULTS_JOB)
    sources = [{"name": "cb", "type": "local", "path": str(root / "src")}]
    config = {"workers": 2, "sources": sources, **callback_config(receiver, secret_file)}
    server = ServerProcess(root, config, dev=True, env=None).start()
    yield server
    server.stop(timeout=30)


def callback_state(server: ServerProcess, run_id: str, state: str, attempts: int | None = None) -> dict[str, Any]:
    def reached() -> dict[str, Any] | None:
        callback = server.get(f"/runs/{run_id}").json()["run"]["callback"]
        return callback if callback["state"] == state and attempts in (None, callback["attempts"]) else None

    return wait_until(reached, 20, 0.05, f"the callback of {run_id} to be {state}")


def callback_events(server: ServerProcess, run_id: str, count: int) -> list[tuple[str, dict[str, Any]]]:
    """The run's first ``count`` callback events (they follow run.finished: GET /events has them, filtered)."""
    seen: list[dict[str, Any]] = []

    def enough(event: dict[str, Any]) -> bool:
        seen.append(event)
        return len(seen) >= count

    url = f"{server.url}/events?run={run_id}&type=callback.*"
    read_stream(url, server.headers(), until=enough, timeout=20)
    return [(e["data"]["type"], e["data"]["data"]) for e in seen]


def test_a_finished_run_is_posted_once_signed_as_get_shows_it(hooked: ServerProcess, receiver: Receiver):
    url = receiver.script("/hooks/ok", 200) + "?token=t0ps3cret"
    run = hooked.submit("noop", callback={"url": url})
    assert run["callback"]["url"] == receiver.url + "/hooks/ok?[redacted]"
    assert run["callback"]["state"] == "waiting" and run["callback"]["attempts"] == 0

    [got] = receiver.wait_for("/hooks/ok", 1)
    assert got.path == "/hooks/ok?token=t0ps3cret"  # the real URL is used, only shown redacted
    assert got.headers["Content-Type"] == "application/json"
    assert got.headers["X-Flwd-Event"] == "run.finished"
    assert got.headers["X-Flwd-Delivery"] == run["callback"]["id"]
    assert signature_ok(SECRET, got.body, got.headers["X-Flwd-Signature-256"])
    assert not signature_ok(b"another key", got.body, got.headers["X-Flwd-Signature-256"])

    delivered = callback_state(hooked, run["id"], "delivered")
    assert (delivered["attempts"], delivered["last_status"]) == (1, 200)
    sent = json.loads(got.body)["run"]
    shown = hooked.get(f"/runs/{run['id']}").json()["run"]
    assert sent["status"] == "succeeded" and sent["finished_at"] is not None
    assert {k: v for k, v in sent.items() if k != "callback"} == {k: v for k, v in shown.items() if k != "callback"}
    assert sent["callback"]["state"] == "pending"  # as GET showed it while the POST was made
    assert callback_events(hooked, run["id"], 1) == [
        (
            "callback.delivered",
            {"delivery": run["callback"]["id"], "url": run["callback"]["url"], "attempt": 1, "status": 200},
        )
    ]
    assert len(receiver.at("/hooks/ok")) == 1  # two workers, one delivery
    export = hooked.get("/export").text
    for text in (hooked.logs(), export, got.body.decode(), json.dumps(callback_events(hooked, run["id"], 1))):
        assert SECRET.decode() not in text and "t0ps3cret" not in text


def test_the_callback_carries_the_runs_outputs_and_artifact_digests(hooked: ServerProcess, receiver: Receiver):
    run = hooked.submit("cb:results", callback={"url": receiver.script("/hooks/results", 200)})
    [got] = receiver.wait_for("/hooks/results", 1)
    sent = json.loads(got.body)["run"]
    assert sent["status"] == "succeeded", sent
    assert sent["outputs"] == {"version": "1.4.2"}
    digest = hashlib.sha256(b"report").hexdigest()
    assert sent["artifacts"] == [{"path": "report.txt", "size": 6, "sha256": digest}]
    assert hooked.get(f"/runs/{run['id']}").json()["run"]["artifacts"] == sent["artifacts"]


def test_a_503_is_retried_with_the_same_delivery_id(hooked: ServerProcess, receiver: Receiver):
    run = hooked.submit("noop", callback={"url": receiver.script("/hooks/flaky", 503, 200)})
    first, second = receiver.wait_for("/hooks/flaky", 2)
    assert first.headers["X-Flwd-Delivery"] == second.headers["X-Flwd-Delivery"] == run["callback"]["id"]
    assert all(signature_ok(SECRET, r.body, r.headers["X-Flwd-Signature-256"]) for r in (first, second))
    assert callback_state(hooked, run["id"], "delivered")["attempts"] == 2
    (failed, failure), (delivered, success) = callback_events(hooked, run["id"], 2)
    assert (failed, failure["attempt"], failure["status"], failure["error"]) == ("callback.failed", 1, 503, "HTTP 503")
    assert failure["retry_in"] is not None
    assert (delivered, success["attempt"], success["status"]) == ("callback.delivered", 2, 200)


def test_a_timeout_is_a_failed_attempt_and_retried(hooked: ServerProcess, receiver: Receiver):
    run = hooked.submit("noop", callback={"url": receiver.script("/hooks/slow", HOLD, 200)})
    receiver.wait_for("/hooks/slow", 2)
    callback_state(hooked, run["id"], "delivered")
    (_, failure), (_, success) = callback_events(hooked, run["id"], 2)
    assert (failure["status"], failure["error"]) == (None, "no answer within 1s")
    assert success["attempt"] == 2


def test_a_redirect_is_a_failed_attempt_never_followed(hooked: ServerProcess, receiver: Receiver):
    target = receiver.url + "/hooks/target"
    run = hooked.submit("noop", callback={"url": receiver.script("/hooks/moved", (302, {"Location": target}))})
    failed = callback_state(hooked, run["id"], "failed")
    assert (failed["attempts"], failed["last_status"]) == (3, 302)  # callbacks.max_attempts, then given up
    assert len(receiver.at("/hooks/moved")) == 3 and receiver.at("/hooks/target") == []
    attempts = callback_events(hooked, run["id"], 3)
    assert [(t, d["attempt"], d["status"]) for t, d in attempts] == [("callback.failed", n, 302) for n in (1, 2, 3)]
    assert attempts[-1][1]["retry_in"] is None


@pytest.mark.parametrize(
    ("callback", "field", "words"),
    [
        ({"url": "http://127.0.0.1:1/hooks"}, "callback.url", "callbacks.allowed_urls"),
        ({"url": "RECEIVER/hooksx"}, "callback.url", "callbacks.allowed_urls"),
        ({"url": "http://127.0.0.1:PORT@evil.example/hooks"}, "callback.url", "userinfo"),
        ({"url": "RECEIVER/hooks#x"}, "callback.url", "fragment"),
        ({"url": "RECEIVER/hooks/../admin"}, "callback.url", "dot segment"),
        ("RECEIVER/hooks", "callback", "expected an object"),
        ({"url": "RECEIVER/hooks", "secret": "x"}, "callback.secret", "unknown field"),
        ({}, "callback.url", "required"),
    ],
)
def test_a_callback_outside_the_allow_list_is_a_422_and_no_run(hooked, receiver, callback, field, words):
    text = json.dumps(callback).replace("RECEIVER", receiver.url).replace("PORT", str(receiver.port))
    before = len(hooked.get("/runs").json()["runs"])
    response = hooked.post("/runs", {"job": "noop", "callback": json.loads(text)})
    assert response.status_code == 422, response.text
    problem = response.json()
    assert [e["field"] for e in problem["errors"]] == [field]
    assert words in json.dumps(problem)
    assert len(hooked.get("/runs").json()["runs"]) == before


def test_a_pending_retry_is_delivered_after_a_restart(start_server, receiver: Receiver, secret_file: Path):
    # A first retry 3-6 s away: the server is stopped (in well under a second) before it is due, then started again.
    server = start_server(callback_config(receiver, secret_file, backoff=6.0))
    run = server.submit("noop", callback={"url": receiver.script("/hooks/restart", 503, 200)})
    assert callback_state(server, run["id"], "pending", attempts=1)["last_status"] == 503
    assert server.stop(timeout=30) == 0
    assert len(receiver.at("/hooks/restart")) == 1  # the retry was not due before the stop
    server.start()
    first, second = receiver.wait_for("/hooks/restart", 2, timeout=30)
    assert second.headers["X-Flwd-Delivery"] == first.headers["X-Flwd-Delivery"]
    delivered = callback_state(server, run["id"], "delivered")
    assert (delivered["attempts"], delivered["last_status"]) == (2, 200)


def test_the_cli_delivers_a_local_runs_callback_itself(tmp_path: Path, receiver: Receiver, secret_file: Path):
    env = {
        "FLWD_DATA_DIR": str(tmp_path / "cli-data"),
        "FLWD_CALLBACKS__ALLOWED_URLS": receiver.url + "/hooks/cli",
        "FLWD_CALLBACKS__SECRET_FILE": str(secret_file),
    }
    done = cli("noop", "--callback", receiver.script("/hooks/cli/attached", 200), env=env)
    assert done.returncode == 0, done.stderr
    [got] = receiver.at("/hooks/cli/attached")  # delivered before the command returned
    assert signature_ok(SECRET, got.body, got.headers["X-Flwd-Signature-256"])
    assert json.loads(got.body)["run"]["status"] == "succeeded"

    detached = cli("noop", "--detach", "--callback", receiver.script("/hooks/cli/detached", 200), env=env)
    assert detached.returncode == 0, detached.stderr
    [later] = receiver.wait_for("/hooks/cli/detached", 1)  # by the background runner
    assert json.loads(later.body)["run"]["id"] == detached.stdout.strip()

    refused = cli("noop", "--callback", "http://127.0.0.1:1/elsewhere", env=env)
    assert refused.returncode != 0 and "callbacks.allowed_urls" in refused.stderr
    nothing = cli("noop", "--callback", receiver.url + "/hooks/cli/x", env={"FLWD_DATA_DIR": env["FLWD_DATA_DIR"]})
    assert nothing.returncode != 0 and "callbacks.allowed_urls is empty" in nothing.stderr
    unsigned = {k: v for k, v in env.items() if k != "FLWD_CALLBACKS__SECRET_FILE"}
    keyless = cli("noop", "--callback", receiver.url + "/hooks/cli/x", env=unsigned)
    assert keyless.returncode != 0 and "callbacks.secret_file is not set" in keyless.stderr
    assert receiver.at("/hooks/cli/x") == []
