"""``flwd :approve`` and ``flwd :deny``, against a server and locally; ``flwd JOB`` of a job needing approval."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.fixtures.helpers import cli
from tests.fixtures.server import ServerProcess

pytestmark = pytest.mark.integration

GATED = (
    'name: gated\napproval: {required: 1}\nargs:\n  name: {default: x}\nsteps:\n  - run: echo "hello $FLWD_ARG_NAME"\n'
)


@pytest.fixture
def jobs_dir(tmp_path: Path) -> Path:
    (tmp_path / "src" / "jobs").mkdir(parents=True)
    (tmp_path / "src" / "jobs" / "gated.yaml").write_text(GATED)
    return tmp_path / "src"


def remote(server: ServerProcess, token: str, *args: str) -> Any:
    return cli("--server", server.url, "--token", token, *args)


def test_remote_run_waits_then_approve_and_deny(start_server, jobs_dir):
    server = start_server({"sources": [{"type": "local", "name": "t", "path": str(jobs_dir)}]})
    submitted = remote(server, "dev-token", "gated", "--name", "Ada")
    assert submitted.returncode == 0, submitted.stderr
    run_id = submitted.stdout.strip()
    assert f"run {run_id} of t:gated awaits approval" in submitted.stderr and "flwd :approve" in submitted.stderr
    assert server.run_status(run_id) == "awaiting_approval"
    own = remote(server, "dev-token", ":approve", run_id)
    assert own.returncode == 2 and "cannot approve" in own.stderr
    wrong = remote(server, "dev-approver", ":approve", run_id, "--digest", "sha256:" + "0" * 64)
    assert wrong.returncode == 2 and "sha256:" + "0" * 64 in wrong.stderr
    approved = remote(server, "dev-approver", ":approve", run_id)
    assert approved.returncode == 0, approved.stderr
    digest = server.get(f"/runs/{run_id}").json()["run"]["plan_digest"]
    assert "t:gated" in approved.stderr and '"name": "Ada"' in approved.stderr and digest in approved.stderr
    assert server.wait_finished(run_id)["status"] == "succeeded"
    other = server.submit("t:gated")["id"]
    denied = remote(server, "dev-approver", ":deny", other, "--reason", "frozen")
    assert denied.returncode == 0 and denied.stdout.strip() == f"{other}: rejected (frozen)", denied.stderr
    assert remote(server, "dev-approver", ":deny", other, "--reason", "again").returncode == 2


def test_local_approval_by_another_user_runs_the_job_here(tmp_path, jobs_dir):
    config = tmp_path / "flwd.yaml"
    config.write_text(
        yaml.safe_dump(
            {"data_dir": str(tmp_path / "data"), "sources": [{"type": "local", "name": "t", "path": str(jobs_dir)}]}
        )
    )

    def as_user(user: str, *args: str) -> Any:
        return cli(*args, env={"FLWD_CONFIG": str(config), "USER": user, "LOGNAME": user})

    submitted = as_user("alice", "gated", "--name", "Bo")
    assert submitted.returncode == 0 and "awaits approval" in submitted.stderr, submitted.stderr
    run_id = submitted.stdout.strip()
    assert as_user("alice", ":approve", run_id).returncode == 2  # her own run
    approved = as_user("bob", ":approve", run_id)
    assert approved.returncode == 0, approved.stderr
    assert approved.stdout.splitlines()[0] == "hello Bo"
    assert as_user("bob", ":deny", run_id, "--reason", "late").returncode == 2
