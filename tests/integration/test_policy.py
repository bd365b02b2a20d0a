"""Every check under every profile: the outcome in the plan, in the run's events and in the log."""

from __future__ import annotations

import json

import pytest

from tests.fixtures.helpers import read_stream, wait_until

pytestmark = pytest.mark.integration

DIGEST = "@sha256:" + "b" * 64
GOOD_IMAGE = f"registry.example.org/tools/a{DIGEST}"
JOBS = {
    "host-env": "name: needs-host-env\nrequires: [host-env]\nsteps:\n  - run: 'echo \"token=${SECRET_FOR_TEST:-unset}\"'\n",
    "image-registry": f"name: foreign-image\nsteps:\n  - image: evil.example.com/x/y{DIGEST}\n    command: [x]\n",
    "image-digest": "name: unpinned-image\nsteps:\n  - image: registry.example.org/tools/a:latest\n    command: [x]\n",
    "privileged": f"name: privileged\nsteps:\n  - image: {GOOD_IMAGE}\n    privileged: true\n    command: [x]\n",
    "host-network": f"name: host-net\nrequires: [network]\nsteps:\n  - image: {GOOD_IMAGE}\n    network: host\n    command: [x]\n",
    "container-network": f"name: sneaky-net\nsteps:\n  - image: {GOOD_IMAGE}\n    network: default\n    command: [x]\n",
    "container-runtime": f"name: boxed\nsteps:\n  - image: {GOOD_IMAGE}\n    command: [x]\n",
}
EXPECTED = {  # check -> outcome under secure, permissive, disabled (None: the check does not run)
    "host-env": ("deny", "warn", None),
    "image-registry": ("deny", "warn", None),
    "image-digest": ("deny", "warn", None),
    "privileged": ("deny", "warn", None),
    "host-network": ("deny", "warn", None),
    "container-network": ("deny", "warn", None),
    "container-runtime": ("deny", "deny", "deny"),
}
PROFILES = ("secure", "permissive", "disabled")


@pytest.fixture(scope="module")
def policy_server(tmp_path_factory):
    from tests.fixtures.server import ServerProcess

    root = tmp_path_factory.mktemp("policy")
    (root / "src" / "jobs").mkdir(parents=True)
    for check, text in JOBS.items():
        (root / "src" / "jobs" / f"{check}.yaml").write_text(text)
    config = {
        "sources": [{"type": "local", "name": "p", "path": str(root / "src")}],
        "container": {
            "runtime": "none",
            "allowed_registries": ["registry.example.org"],
            "verify_signatures": "disabled",
        },
        "policy": {"allowed_downgrades": ["permissive", "disabled"]},
    }
    server = ServerProcess(root, config, dev=True, env={"SECRET_FOR_TEST": "from-the-server-env"}).start()
    yield server
    server.stop()


def decision_log(server, run_id):
    lines = []
    for line in server.logs().splitlines():
        if line.startswith("{"):
            record = json.loads(line)
            if record.get("logger") == "flwd.decisions" and record.get("run_id") == run_id:
                lines.append(record)
    return lines


@pytest.mark.parametrize("profile", PROFILES)
@pytest.mark.parametrize("check", sorted(EXPECTED))
def test_each_check_shows_in_the_plan_the_events_and_the_log(policy_server, check, profile):
    expected = EXPECTED[check][PROFILES.index(profile)]
    job = JOBS[check].split("\n", 1)[0].removeprefix("name: ")
    body = {"job": job, "args": {}, "profile": profile}
    plan = policy_server.post("/plans", body).json()["plan"]
    outcomes = {d["check"]: d["outcome"] for d in plan["decisions"]}
    assert outcomes.get(check) == expected
    if profile == "disabled":
        assert outcomes["profile"] == "warn"
    if profile != "secure":
        assert outcomes["profile-downgrade"] == "warn"  # granted: dev-token holds runs:downgrade
    assert plan["runnable"] is ("deny" not in outcomes.values())

    run = policy_server.submit(job, {}, profile=profile)
    done = policy_server.wait_finished(run["id"])
    events = policy_server.events(run["id"])
    decided = {
        e["data"]["data"]["check"]: e["data"]["data"]["outcome"] for e in events if e["event"] == "policy.decision"
    }
    assert decided.get(check) == expected
    if "deny" in decided.values():  # container jobs also meet container-runtime: none here
        assert done["status"] == "rejected"
        assert all(c in done["reason"] for c, o in decided.items() if o == "deny")
        assert "step.started" not in [e["event"] for e in events]  # a denied run never starts a process
    else:
        assert done["status"] == "succeeded"
    if profile != "secure":
        downgrade = next(e for e in events if e["event"] == "policy.profile_downgrade")["data"]["data"]
        assert (downgrade["subject"], downgrade["from"], downgrade["to"], downgrade["granted"]) == (
            "dev",
            "secure",
            profile,
            True,
        )
    if expected is not None:
        logged = wait_until(
            lambda: [r for r in decision_log(policy_server, run["id"]) if r["check"] == check],
            5,
            message="the decision's log line",
        )
        assert logged[0]["outcome"] == expected and logged[0]["reason"]


def test_a_warned_run_carries_the_warning_and_may_use_the_host_environment(policy_server):
    run = policy_server.submit("needs-host-env", {}, profile="permissive")
    events = policy_server.events(run["id"])
    warning = next(e for e in events if e["event"] == "policy.decision" and e["data"]["data"]["check"] == "host-env")
    assert warning["data"]["data"]["outcome"] == "warn"
    output = [e["data"]["data"]["line"] for e in events if e["event"] == "step.output"]
    assert output == ["token=from-the-server-env"]


def test_under_secure_the_host_environment_is_never_visible(policy_server):
    run = policy_server.submit("needs-host-env", {})
    assert policy_server.wait_finished(run["id"])["status"] == "rejected"
    plan = policy_server.post("/plans", {"job": "needs-host-env"}).json()["plan"]
    assert plan["runnable"] is False


def test_a_token_without_runs_downgrade_cannot_run_below_the_default(start_server, jwt_auth):
    auth = jwt_auth
    server = start_server({"auth": auth.config, "policy": {"allowed_downgrades": ["permissive"]}}, dev=False)
    limited = auth.token("runs:write runs:read jobs:read", sub="carol")
    refused = server.post(
        "/runs", {"job": "hello-world", "args": {"name": "A"}, "profile": "permissive"}, token=limited
    )
    assert refused.status_code == 403 and "runs:downgrade" in refused.json()["detail"]
    assert server.get("/runs", token=limited).json()["runs"] == []
    allowed = auth.token("runs:write runs:read runs:downgrade", sub="dave")
    not_listed = server.post(
        "/runs", {"job": "hello-world", "args": {"name": "A"}, "profile": "disabled"}, token=allowed
    )
    assert not_listed.status_code == 403 and "allowed_downgrades" in not_listed.json()["detail"]
    granted = server.post(
        "/runs", {"job": "hello-world", "args": {"name": "A"}, "profile": "permissive"}, token=allowed
    )
    assert granted.status_code == 202 and granted.json()["run"]["profile"] == "permissive"
    everything = read_stream(
        f"{server.url}/events", {"Authorization": f"Bearer {allowed}"}, until=lambda e: e["event"] == "run.finished"
    )
    downgrades = [e["data"]["data"] for e in everything if e["event"] == "policy.profile_downgrade"]
    assert [(d["subject"], d["to"], d["granted"]) for d in downgrades] == [
        ("carol", "permissive", False),
        ("dave", "disabled", False),
        ("dave", "permissive", True),
    ]
