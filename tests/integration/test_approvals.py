"""Approvals bound to the plan through a real server, on SQLite and PostgreSQL.

A job with ``approval: {required: N}`` waits ``awaiting_approval`` until N people other than its
submitter approve its plan digest; the last approval plans it again and queues it, or rejects it
when its source moved. ``dev-token`` (subject ``dev``) submits, ``dev-approver`` and signed JWTs approve.
"""

from __future__ import annotations

from typing import Any

import pytest
import requests

from tests.fixtures.git import GitRepo, job_yaml
from tests.fixtures.helpers import require_tool, sse_events
from tests.fixtures.server import ServerProcess
from tests.fixtures.tokens import JwtAuth

pytestmark = pytest.mark.integration

JOBS = {
    "gated": "name: gated\napproval: {required: 1}\nargs:\n  name: {default: x}\n  token: {secret: true, default: none}\n"
    'steps:\n  - run: \'echo "hello $FLWD_ARG_NAME"; if [ "$FLWD_ARG_TOKEN" = s3cret ]; then echo token-ok; fi\'\n',
    "twoperson": "name: twoperson\napproval: {required: 2}\nsteps:\n  - run: echo two\n",
    "editable": "name: editable\napproval:\nsteps:\n  - run: echo v1\n",
    "free": "name: free\nsteps:\n  - run: echo free\n",
}
APPROVER = "dev-approver"


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def srv(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, module_jwt_auth: JwtAuth):
    root = tmp_path_factory.mktemp(f"approvals-{request.param}")
    (root / "src" / "jobs").mkdir(parents=True)
    for name, text in JOBS.items():
        (root / "src" / "jobs" / f"{name}.yaml").write_text(text)
    config: dict[str, Any] = {
        "auth": module_jwt_auth.config,
        "sources": [{"type": "local", "name": "t", "path": str(root / "src")}],
        "limits": {"max_concurrent_runs": 1},
        "sse": {"heartbeat": 1.0},
    }
    url = None
    if request.param == "postgres":
        cluster = request.getfixturevalue("postgres")
        url = cluster.create_database()
        config["db_url"] = url
    server = ServerProcess(root, config, dev=True, env=None)
    server.start()
    server.source_dir = root / "src"  # type: ignore[attr-defined]
    yield server
    server.stop(timeout=30)
    if url is not None:
        cluster.drop_database(url)


def awaiting(server: ServerProcess, job: str, args: dict[str, Any] | None = None) -> dict[str, Any]:
    run = server.submit(f"t:{job}", args or {})
    assert run["status"] == "awaiting_approval", run
    return run


def approve(server: ServerProcess, run: dict[str, Any], token: str = APPROVER, digest: str | None = None):
    return server.post(f"/runs/{run['id']}/approve", {"digest": digest or run["plan_digest"]}, token=token)


def events(server: ServerProcess, run_id: str) -> list[dict[str, Any]]:
    """The run's events as flwd sends them (``{"id", "type", "data", ...}``), until it ends."""
    return [frame["data"] for frame in server.events(run_id, timeout=30) if "comment" not in frame]


def test_a_run_needing_approval_waits_and_is_never_claimed(srv):
    run = awaiting(srv, "gated", {"name": "a"})
    assert srv.get("/jobs/t:gated").json()["job"]["approval"] == {"required": 1}
    free = srv.submit("t:free")  # newer, and max_concurrent_runs is 1: it runs only if the waiting run is skipped
    assert srv.wait_finished(free["id"])["status"] == "succeeded"
    assert srv.run_status(run["id"]) == "awaiting_approval"
    listed = srv.get("/runs", params={"status": "awaiting_approval"}).json()["runs"]
    assert run["id"] in [r["id"] for r in listed]
    first = srv.get(f"/runs/{run['id']}").json()["run"]
    assert first["started_at"] is None and first["finished_at"] is None
    stream = requests.get(
        f"{srv.url}/events", params={"run": run["id"], "after": 0}, headers=srv.headers(), stream=True, timeout=10
    )
    with stream:
        seen = []
        for event in sse_events(stream.iter_lines()):
            if "comment" not in event:
                seen.append(event["data"])
            if event.get("event") == "run.approval_requested":
                break
    assert [e["type"] for e in seen] == ["run.queued", "run.approval_requested"]
    assert seen[1]["data"] == {"required": 1, "digest": run["plan_digest"], "submitted_by": "dev"}
    assert srv.post(f"/runs/{run['id']}/cancel").status_code == 202  # leave nothing waiting


def test_approval_of_the_plan_digest_by_another_person_runs_it_with_its_secrets(srv):
    run = awaiting(srv, "gated", {"name": "b", "token": "s3cret"})
    other = "sha256:" + "0" * 64
    wrong = approve(srv, run, digest=other)
    assert wrong.status_code == 409, wrong.text
    problem = wrong.json()
    assert problem["approved"] == other and problem["plan_digest"] == run["plan_digest"]
    assert other in problem["detail"] and run["plan_digest"] in problem["detail"]
    own = approve(srv, run, token="dev-token")
    assert own.status_code == 403 and own.json()["type"] == "urn:flwd:error:self-approval", own.text
    assert srv.run_status(run["id"]) == "awaiting_approval"
    reply = approve(srv, run)
    assert reply.status_code == 200, reply.text
    assert reply.json()["run"]["status"] in ("queued", "running", "succeeded")
    assert srv.wait_finished(run["id"])["status"] == "succeeded"
    seen = events(srv, run["id"])
    approved = [e for e in seen if e["type"] == "run.approved"]
    assert [(e["data"]["by"], e["data"]["digest"]) for e in approved] == [(APPROVER, run["plan_digest"])]
    lines = [e["data"]["line"] for e in seen if e["type"] == "step.output"]
    assert lines == ["hello b", "token-ok"]
    assert "s3cret" not in str(seen)
    again = approve(srv, run)
    assert again.status_code == 409 and again.json()["type"] == "urn:flwd:error:not-awaiting-approval"


def test_two_approvers_are_needed_and_one_counts_once(srv, module_jwt_auth):
    me = srv.get("/auth/me", token=APPROVER).json()
    assert me["subject"] == APPROVER and "runs:approve" in me["scopes"] and me["dev"] is True
    run = awaiting(srv, "twoperson")
    assert approve(srv, run).status_code == 200
    assert srv.run_status(run["id"]) == "awaiting_approval"
    twice = approve(srv, run)
    assert twice.status_code == 409 and twice.json()["type"] == "urn:flwd:error:already-approved", twice.text
    carol = module_jwt_auth.token("runs:approve runs:read", sub="carol")
    assert approve(srv, run, token=carol).status_code == 200
    assert srv.wait_finished(run["id"])["status"] == "succeeded"
    approvals = [e["data"] for e in events(srv, run["id"]) if e["type"] == "run.approved"]
    assert [(a["by"], a["approvals"], a["required"]) for a in approvals] == [(APPROVER, 1, 2), ("carol", 2, 2)]


def test_deny_ends_it_rejected_with_the_reason_and_who(srv):
    run = awaiting(srv, "gated")
    for body, status in (({}, 422), ({"reason": " "}, 422), ({"reason": "x", "extra": 1}, 422), ({"reason": 5}, 422)):
        assert srv.post(f"/runs/{run['id']}/deny", body, token=APPROVER).status_code == status, body
    raw = requests.post(f"{srv.url}/runs/{run['id']}/deny", data="reason", headers=srv.headers(APPROVER), timeout=10)
    assert raw.status_code == 415
    for body in ({}, {"digest": "md5:1"}, {"digest": run["plan_digest"], "x": 1}):
        assert srv.post(f"/runs/{run['id']}/approve", body, token=APPROVER).status_code == 422, body
    assert srv.run_status(run["id"]) == "awaiting_approval"  # bad bodies change nothing
    reply = srv.post(f"/runs/{run['id']}/deny", {"reason": "not during the freeze"}, token=APPROVER)
    assert reply.status_code == 200, reply.text
    ended = reply.json()["run"]
    assert ended["status"] == "rejected" and ended["reason"] == "not during the freeze"
    finished = [e for e in events(srv, run["id"]) if e["type"] == "run.finished"]
    assert finished[0]["data"]["denied_by"] == APPROVER and finished[0]["data"]["status"] == "rejected"
    assert srv.post(f"/runs/{run['id']}/deny", {"reason": "again"}, token=APPROVER).status_code == 409
    assert approve(srv, run).status_code == 409
    assert srv.post("/runs/nosuchrun/deny", {"reason": "x"}, token=APPROVER).status_code == 404


def test_a_waiting_run_can_be_cancelled(srv):
    run = awaiting(srv, "gated")
    reply = srv.post(f"/runs/{run['id']}/cancel")
    assert reply.status_code == 202 and reply.json()["run"]["status"] == "cancelled", reply.text
    assert approve(srv, run).status_code == 409


def test_runs_approve_narrows_to_jobs(srv, module_jwt_auth):
    gated, two = awaiting(srv, "gated"), awaiting(srv, "twoperson")
    narrow = module_jwt_auth.token("runs:approve:t:gated", sub="narrow")
    refused = approve(srv, two, token=narrow)
    assert refused.status_code == 403 and refused.json()["scope"] == "runs:approve:t:twoperson", refused.text
    assert srv.post(f"/runs/{two['id']}/deny", {"reason": "x"}, token=narrow).status_code == 403
    reader = module_jwt_auth.token("runs:read runs:write", sub="reader")
    assert approve(srv, gated, token=reader).status_code == 403
    assert srv.run_status(gated["id"]) == "awaiting_approval"
    assert approve(srv, gated, token=narrow).status_code == 200
    assert srv.wait_finished(gated["id"])["status"] == "succeeded"
    assert srv.post(f"/runs/{two['id']}/cancel").status_code == 202


def test_a_local_edit_since_the_plan_rejects_the_approved_run(srv):
    run = awaiting(srv, "editable")
    job_file = srv.source_dir / "jobs" / "editable.yaml"
    job_file.write_text(JOBS["editable"].replace("echo v1", "echo v2"))
    try:
        reply = approve(srv, run)
        assert reply.status_code == 200, reply.text
        ended = srv.wait_finished(run["id"])
        assert ended["status"] == "rejected" and ended["reason"].startswith("changed since approval"), ended
        assert not [e for e in events(srv, run["id"]) if e["type"] == "step.output"]
        fresh = awaiting(srv, "editable")  # planned against the edit: approving it runs v2
        assert approve(srv, fresh).status_code == 200
        assert srv.wait_finished(fresh["id"])["status"] == "succeeded"
    finally:
        job_file.write_text(JOBS["editable"])


def test_a_git_ref_moved_since_the_plan_rejects_the_approved_run(srv, tmp_path):
    require_tool("git")
    repo = GitRepo(tmp_path / "deploys")
    repo.write("jobs/ship.yaml", job_yaml("ship", "echo shipped").replace("steps:", "approval: {required: 1}\nsteps:"))
    repo.commit("v1")
    name = "deploys"
    added = srv.post("/sources", {"type": "git", "name": name, "url": repo.url, "ref": "main"}, timeout=60)
    assert added.status_code == 201, added.text
    try:
        run = srv.submit(f"{name}:ship")
        assert run["status"] == "awaiting_approval"
        repo.write("README", "a new commit, the job file untouched\n")
        repo.commit("v2")
        assert srv.post(f"/sources/{name}/sync", timeout=60).status_code < 300
        assert approve(srv, run).status_code == 200
        ended = srv.wait_finished(run["id"])
        assert ended["status"] == "rejected" and "changed since approval" in ended["reason"], ended
        assert "moved from revision" in ended["reason"]
    finally:
        srv.delete(f"/sources/{name}")


def test_waiting_runs_do_not_count_against_max_concurrent_runs_nor_the_queue(srv):
    waiting = [awaiting(srv, "gated") for _ in range(3)]
    runs = [srv.submit("t:free") for _ in range(2)]
    for run in runs:
        assert srv.wait_finished(run["id"])["status"] == "succeeded"
    metrics = srv.get("/metrics").text
    assert 'flwd_runs{source="t",job="gated",status="awaiting_approval"} 3' in metrics
    for run in waiting:
        assert srv.post(f"/runs/{run['id']}/cancel").status_code == 202


def test_waiting_runs_expire_after_approval_timeout(start_server, db_backend, tmp_path):
    (tmp_path / "src" / "jobs").mkdir(parents=True)
    (tmp_path / "src" / "jobs" / "gated.yaml").write_text(JOBS["gated"])
    server = start_server(
        {
            **db_backend,
            "policy": {"approval_timeout": 1},
            "sources": [{"type": "local", "name": "t", "path": str(tmp_path / "src")}],
        }
    )
    run = awaiting(server, "gated")
    ended = server.wait_finished(run["id"], timeout=30)  # the sweeper looks every few seconds
    assert ended["status"] == "rejected" and "approval_timeout" in ended["reason"], ended
    assert approve(server, run).status_code == 409
