"""What was planned is what runs: a local source is read as it is at each plan and run, and a
plan or run body names every invalid field at once.  A real server with two workers, so a
plan and the run that names its digest may well be answered by different processes."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.fixtures.git import job_yaml
from tests.fixtures.server import ServerProcess

pytestmark = pytest.mark.integration

SCRIPT_JOB = job_yaml("script-job", 'sh "$FLWD_SOURCE_DIR/scripts/hello.sh"')


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Any:
    server = ServerProcess(tmp_path_factory.mktemp("freshness"), {"workers": 2, "threads": 8}, dev=True, env=None)
    server.start()
    yield server
    server.stop(timeout=30)


@pytest.fixture(scope="module")
def folder(srv: ServerProcess, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A local source ``fresh`` with an editable job and a job that runs a script of the folder."""
    root = tmp_path_factory.mktemp("fresh-source")
    (root / "jobs").mkdir()
    (root / "scripts").mkdir()
    (root / "jobs" / "edited.yaml").write_text(job_yaml("edited", "echo version-0"))
    (root / "jobs" / "script-job.yaml").write_text(SCRIPT_JOB)
    (root / "scripts" / "hello.sh").write_text("echo script-v1\n")
    added = srv.post("/sources", {"type": "local", "name": "fresh", "path": str(root)})
    assert added.status_code == 201, added.text
    return root


def plan(srv: ServerProcess, job: str, **body: Any) -> dict[str, Any]:
    response = srv.post("/plans", {"job": f"fresh:{job}", "args": {}, **body})
    assert response.status_code == 200, response.text
    return response.json()["plan"]


def submit(srv: ServerProcess, job: str, digest: str) -> requests.Response:
    return srv.post("/runs", {"job": f"fresh:{job}", "args": {}, "plan": digest})


def run_script(planned: dict[str, Any]) -> str:
    return planned["steps"][0]["run"]


def output(srv: ServerProcess, run_id: str) -> list[str]:
    return [e["data"]["data"]["line"] for e in srv.events(run_id) if e["event"] == "step.output"]


def run_count(srv: ServerProcess) -> int:
    return len(srv.get("/runs?limit=500").json()["runs"])


def test_five_edits_made_right_after_planning_each_refuse_the_stale_digest(srv, folder):
    job_file = folder / "jobs" / "edited.yaml"
    for i in range(1, 6):
        before = plan(srv, "edited")
        job_file.write_text(job_yaml("edited", f"echo version-{i}"))
        refused = submit(srv, "edited", before["digest"])
        assert refused.status_code == 409, (i, refused.text)
        assert refused.json()["type"] == "urn:flwd:error:plan-changed"
        after = plan(srv, "edited")
        assert run_script(after) == f"echo version-{i}" and after["digest"] != before["digest"]
    accepted = submit(srv, "edited", after["digest"])
    assert accepted.status_code == 202, accepted.text
    assert output(srv, accepted.json()["run"]["id"]) == ["version-5"]


def test_a_same_size_edit_that_restores_the_mtime_is_seen(srv, folder):
    job_file = folder / "jobs" / "edited.yaml"
    job_file.write_text(job_yaml("edited", "echo AAAA"))
    before = plan(srv, "edited")
    stat = job_file.stat()
    job_file.write_text(job_yaml("edited", "echo BBBB"))
    os.utime(job_file, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    after_stat = job_file.stat()
    assert (after_stat.st_size, after_stat.st_mtime_ns) == (stat.st_size, stat.st_mtime_ns)
    assert submit(srv, "edited", before["digest"]).status_code == 409
    assert run_script(plan(srv, "edited")) == "echo BBBB"


def test_editing_a_script_the_step_runs_changes_the_revision_and_refuses_the_old_digest(srv, folder):
    script = folder / "scripts" / "hello.sh"
    script.write_text("echo script-v1\n")
    before = plan(srv, "script-job")
    first = submit(srv, "script-job", before["digest"])
    assert first.status_code == 202, first.text
    assert output(srv, first.json()["run"]["id"]) == ["script-v1"]

    script.write_text("echo script-v2\n")
    refused = submit(srv, "script-job", before["digest"])
    assert refused.status_code == 409, refused.text
    after = plan(srv, "script-job")
    assert after["revision"] != before["revision"] and after["digest"] != before["digest"]
    assert srv.get("/sources/fresh").json()["source"]["revision"] == after["revision"]
    second = submit(srv, "script-job", after["digest"])
    assert second.status_code == 202, second.text
    assert output(srv, second.json()["run"]["id"]) == ["script-v2"]


def test_a_new_file_anywhere_in_the_folder_changes_the_revision(srv, folder):
    before = plan(srv, "script-job")
    (folder / "scripts" / "data.txt").write_text("new input a step may read\n")
    try:
        assert submit(srv, "script-job", before["digest"]).status_code == 409
        assert plan(srv, "script-job")["revision"] != before["revision"]
    finally:
        (folder / "scripts" / "data.txt").unlink()
    assert plan(srv, "script-job")["revision"] == before["revision"]  # the revision is of content, not of time


INVALID_BODIES = [
    (
        "unknown field and a bad argument",
        {"job": "hello-world", "args": {"name": "R2-D2"}, "colour": 1},
        {"colour", "args.name"},
    ),
    (
        "unknown field, a bad argument and a missing one",
        {"job": "hello-world", "args": {"times": 9}, "colour": 1, "size": 2},
        {"colour", "size", "args.name", "args.times"},
    ),
    (
        "unknown field, a bad profile and a bad argument",
        {"job": "hello-world", "args": {"name": "A", "x": 1}, "profile": "yolo", "colour": 1},
        {"colour", "profile", "args.x"},
    ),
    ("unknown field and args not an object", {"job": "hello-world", "args": "name=A", "colour": 1}, {"colour", "args"}),
    ("unknown field and no job", {"args": {}, "colour": 1}, {"colour", "job"}),
    ("unknown field and an unknown job", {"job": "no-such-job", "colour": 1}, {"colour", "job"}),
]


@pytest.mark.parametrize(("what", "body", "expected"), INVALID_BODIES, ids=[b[0] for b in INVALID_BODIES])
@pytest.mark.parametrize("path", ["/plans", "/runs"])
def test_every_invalid_field_of_a_plan_or_run_body_is_named_in_one_problem(srv, path, what, body, expected):
    before = run_count(srv)
    response = srv.post(path, body)
    assert response.status_code == 422, response.text
    assert response.headers["Content-Type"] == "application/problem+json"
    problem = response.json()
    assert {e["field"] for e in problem["errors"]} == expected, problem
    for field in expected:
        assert field in problem["detail"], problem
    assert run_count(srv) == before


def test_a_bad_plan_digest_is_named_with_the_unknown_field_and_the_bad_argument(srv):
    body = {"job": "hello-world", "args": {"name": "R2-D2"}, "plan": "nope", "colour": 1}
    response = srv.post("/runs", body)
    assert response.status_code == 422
    assert {e["field"] for e in response.json()["errors"]} == {"colour", "plan", "args.name"}
