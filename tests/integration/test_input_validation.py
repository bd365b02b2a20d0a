"""Input is what the validator says, through a real server: names, patterns, links out of a source, sizes.

Each refusal is a 4xx problem naming the field, and it changes nothing: no source stored, no
folder made, no run queued.
"""

from __future__ import annotations

import pytest
import requests

from tests.fixtures.server import ServerProcess

pytestmark = pytest.mark.integration

NAMED = """name: named
args:
  user: {type: string, required: true, pattern: "^[a-z]{1,8}$"}
  count: {type: integer, default: 1}
steps:
  - run: 'printf "%s\\n" "$FLWD_ARG_USER"'
"""

ECHO = """name: echo
args:
  text: {type: string, required: true}
steps:
  - run: 'printf "%s" "$FLWD_ARG_TEXT" | wc -c'
"""

BIG_SCRIPT = "name: big-script\nsteps:\n  - run: 'true # " + "€" * 45000 + "'\n"

BAD_TAILS = ["\n", "\x00", "\x01"]


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("input")
    (root / "src" / "jobs").mkdir(parents=True)
    (root / "src" / "jobs" / "named.yaml").write_text(NAMED)
    (root / "src" / "jobs" / "echo.yaml").write_text(ECHO)
    (root / "src" / "jobs" / "big-script.yaml").write_text(BIG_SCRIPT)
    config = {"workers": 1, "threads": 8, "sources": [{"type": "local", "name": "in", "path": str(root / "src")}]}
    server = ServerProcess(root, config, dev=True, env=None).start()
    yield server
    server.stop(timeout=30)
    logs = server.logs()
    assert "Traceback" not in logs and '"status": 500' not in logs


def problem(response: requests.Response, status: int = 422) -> dict:
    assert response.status_code == status, (response.status_code, response.text[:300])
    assert response.headers["Content-Type"] == "application/problem+json"
    return response.json()


def fields(response: requests.Response, status: int = 422) -> list[str]:
    return [e["field"] for e in problem(response, status).get("errors", [])]


def run_ids(server: ServerProcess) -> list[str]:
    return [r["id"] for r in server.get("/runs?limit=500").json()["runs"]]


def data_paths(server: ServerProcess) -> set[str]:
    return {str(p.relative_to(server.data_dir)) for p in server.data_dir.rglob("*")}


@pytest.mark.parametrize("tail", BAD_TAILS, ids=repr)
def test_a_source_name_with_a_newline_nul_or_control_character_is_a_422_and_leaves_nothing(srv, tmp_path, tail):
    (tmp_path / "jobs").mkdir()
    before_sources, before_paths = srv.get("/sources").json()["sources"], data_paths(srv)
    response = srv.post("/sources", {"type": "local", "name": "zz" + tail, "path": str(tmp_path)})
    assert fields(response) == ["name"]
    assert srv.get("/sources").json()["sources"] == before_sources
    assert data_paths(srv) == before_paths
    assert not any("zz" in path for path in data_paths(srv))


@pytest.mark.parametrize("tail", BAD_TAILS, ids=repr)
@pytest.mark.parametrize("path", ["/plans", "/runs"])
def test_an_anchored_pattern_and_a_typed_argument_refuse_a_newline_nul_or_control_character(srv, path, tail):
    before = run_ids(srv)
    assert fields(srv.post(path, {"job": "named", "args": {"user": "alice" + tail}})) == ["args.user"]
    assert fields(srv.post(path, {"job": "named", "args": {"user": "alice", "count": "2" + tail}})) == ["args.count"]
    assert run_ids(srv) == before
    assert srv.post("/plans", {"job": "named", "args": {"user": "alice", "count": "2"}}).status_code == 200


def test_a_local_source_whose_jobs_folder_links_outside_is_one_error_and_nothing_under_it_is_read(srv, tmp_path):
    outside = tmp_path / "outside"
    (outside / "deep").mkdir(parents=True)
    for i in range(30):
        (outside / "deep" / f"leak-{i}.yaml").write_text(f"name: leak-{i}\nsteps:\n  - run: 'true'\n")
    (outside / "leak.yaml").write_text("name: leak\nsteps:\n  - run: 'true'\n")
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "jobs").symlink_to(outside)
    for name, target in (("linked", tmp_path / "src"), ("usr", None)):
        root = target or tmp_path / "usr-src"
        if target is None:
            root.mkdir()
            (root / "jobs").symlink_to("/usr")
        added = srv.post("/sources", {"type": "local", "name": name, "path": str(root)})
        assert added.status_code == 201, added.text
        source = srv.get(f"/sources/{name}").json()["source"]
        assert source["jobs"] == []
        assert [(e["path"], e["field"]) for e in source["errors"]] == [("jobs", "(folder)")]
        assert "outside the source root" in source["errors"][0]["message"]
        assert srv.get("/jobs/leak").status_code == 404


def test_a_git_source_whose_jobs_folder_links_outside_is_one_error_and_nothing_under_it_is_read(srv, make_git_repo):
    repo = make_git_repo("linked")
    repo.write("README", "jobs is a link\n").symlink("jobs", "/usr")
    repo.commit("jobs -> /usr")
    added = srv.post("/sources", {"type": "git", "name": "git-linked", "url": repo.url, "ref": "main"})
    assert added.status_code == 201, added.text
    source = srv.get("/sources/git-linked").json()["source"]
    assert source["jobs"] == []
    assert [(e["path"], e["field"]) for e in source["errors"]] == [("jobs", "(folder)")]
    assert "outside the source root" in source["errors"][0]["message"]


@pytest.mark.parametrize("path", ["/plans", "/runs"])
def test_an_argument_too_large_for_exec_in_bytes_is_a_422_naming_it_and_queues_nothing(srv, path):
    before = run_ids(srv)
    assert fields(srv.post(path, {"job": "echo", "args": {"text": "€" * 65536}})) == ["args.text"]
    assert fields(srv.post(path, {"job": "big-script"})) == ["steps[0].run"]
    assert run_ids(srv) == before


def test_a_value_just_under_the_limit_in_bytes_still_runs(srv):
    count = (128 * 1024 - len("FLWD_ARG_TEXT=") - 1) // 3  # 131,070 bytes with its name and NUL
    run = srv.submit("echo", {"text": "€" * count})
    assert srv.wait_finished(run["id"])["status"] == "succeeded"
    lines = [e["data"]["data"]["line"] for e in srv.events(run["id"]) if e["event"] == "step.output"]
    assert [line.strip() for line in lines] == [str(3 * count)]
