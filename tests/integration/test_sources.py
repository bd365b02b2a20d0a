"""Sources through a real server (2 gunicorn workers) and real git repositories registered by file:// URL."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.fixtures.git import GitRepo, git_processes, job_yaml
from tests.fixtures.helpers import read_stream, require_tool
from tests.fixtures.server import ServerProcess

# Verbatim from the reference page ("Working with sources"); the test swaps in its port and repository.
ADD_SOURCE = """curl -s -X POST http://127.0.0.1:8080/sources \\
    -H 'Authorization: Bearer dev-token' \\
    -H 'Content-Type: application/json' \\
    -d '{"type":"git","name":"tools","url":"file:///home/me/repos/tools","ref":"main"}'"""

SLOW_RUN = (
    'echo "start $(cat "$FLWD_SOURCE_DIR/VERSION") rev=$FLWD_SOURCE_REVISION"; '
    'while [ ! -e "$FLWD_ARG_GATE" ]; do sleep 0.05; done; '
    'echo "end $(cat "$FLWD_SOURCE_DIR/VERSION") {marker}"'
)


def write_tools_version(repo: GitRepo, version: str) -> str:
    repo.write("VERSION", f"{version}\n")
    repo.write(
        "jobs/slow-tool.yaml",
        job_yaml(
            "slow-tool",
            SLOW_RUN.format(marker=f"job-{version}"),
            f"slow {version}",
            {"gate": {"type": "string", "required": True}},
        ),
    )
    return repo.commit(version)


@pytest.fixture(scope="module")
def tools_repo(tmp_path_factory: pytest.TempPathFactory) -> GitRepo:
    require_tool("git")
    repo = GitRepo(tmp_path_factory.mktemp("repos") / "tools")
    repo.write("jobs/tool-hello.yaml", job_yaml("tool-hello", 'echo "hello from tools at $FLWD_SOURCE_REVISION"'))
    repo.write("jobs/shared-job.yaml", job_yaml("shared-job", "echo tools"))
    repo.write("jobs/bad-yaml.yaml", "name: bad-yaml\nsteps: [\n")
    repo.write("jobs/broken.yaml", "name: broken\nsteps:\n  - name: a\n    bogus: 1\n")
    repo.symlink("jobs/leak.yaml", "/etc/passwd")
    write_tools_version(repo, "v1")
    return repo


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Any:
    config = {"workers": 2, "threads": 8, "sse": {"heartbeat": 1.0}}
    server = ServerProcess(tmp_path_factory.mktemp("sources-server"), config, dev=True, env=None)
    server.start()
    yield server
    server.stop(timeout=30)


@pytest.fixture(scope="module")
def tools(srv: ServerProcess, tools_repo: GitRepo) -> dict[str, Any]:
    """The reference page's POST /sources example, run literally through curl."""
    require_tool("curl")
    command = ADD_SOURCE.replace("127.0.0.1:8080", f"127.0.0.1:{srv.port}").replace(
        "file:///home/me/repos/tools", tools_repo.url
    )
    done = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)["source"]


def sse_until(server: ServerProcess, path: str, predicate, timeout: float = 20) -> list[dict[str, Any]]:
    return read_stream(server.url + path, server.headers(), until=predicate, timeout=timeout)


def last_event_id(server: ServerProcess) -> int:
    """The id of the newest event, via the stream itself (a run we start and finish now)."""
    run = server.submit("examples:noop")
    events = server.events(run["id"])
    return int(events[-1]["id"])


def output_lines(server: ServerProcess, run_id: str) -> list[str]:
    return [e["data"]["data"]["line"] for e in server.events(run_id) if e["event"] == "step.output"]


def test_the_reference_page_example_registers_the_repository_and_its_jobs(srv, tools, tools_repo):
    assert tools["name"] == "tools" and tools["type"] == "git" and tools["origin"] == "api"
    assert tools["url"] == tools_repo.url and tools["ref"] == "main"
    assert tools["revision"] == tools_repo.head()
    assert {j["name"] for j in tools["jobs"]} == {"tool-hello", "shared-job", "slow-tool"}
    again = srv.get("/sources/tools")
    assert again.status_code == 200 and again.json()["source"]["revision"] == tools_repo.head()
    listed = srv.get("/sources").json()["sources"]
    assert [s["name"] for s in listed] == ["examples", "tools"]
    assert listed[0]["origin"] == "bundled" and listed[0]["removable"] is False


def test_the_jobs_appear_in_jobs_on_every_new_connection(srv, tools):
    for _ in range(20):  # new connections, which either worker may take
        jobs = requests.get(srv.url + "/jobs", headers=srv.headers(), timeout=10).json()["jobs"]
        assert {"tool-hello", "slow-tool"} <= {j["name"] for j in jobs if j["source"] == "tools"}


def test_jobs_run_by_name_and_with_the_hint_and_the_run_shows_its_commit(srv, tools, tools_repo):
    commit = tools_repo.head()
    for body in ({"job": "tool-hello"}, {"job": "tool-hello", "source": "tools"}, {"job": "tools:tool-hello"}):
        plan = srv.post("/plans", {**body, "args": {}}).json()["plan"]
        assert plan["source"] == "tools" and plan["revision"] == commit
        run = srv.submit(body["job"], {}, **({"source": body["source"]} if "source" in body else {}))
        finished = srv.wait_finished(run["id"])
        assert finished["status"] == "succeeded" and finished["revision"] == commit
        assert srv.get(f"/runs/{run['id']}").json()["run"]["revision"] == commit
        assert output_lines(srv, run["id"]) == [f"hello from tools at {commit}"]


def test_a_broken_job_file_is_listed_with_its_path_and_line_and_hides_nothing(srv, tools):
    errors = srv.get("/sources/tools").json()["source"]["errors"]
    by_path = {}
    for error in errors:
        by_path.setdefault(error["path"], []).append(error)
    assert by_path["jobs/bad-yaml.yaml"][0]["line"] == 3 and "YAML" in by_path["jobs/bad-yaml.yaml"][0]["message"]
    assert {e["field"] for e in by_path["jobs/broken.yaml"]} >= {"steps[0].bogus"}
    assert "outside the source root" in by_path["jobs/leak.yaml"][0]["message"]
    assert srv.post("/plans", {"job": "tools:tool-hello", "args": {}}).status_code == 200


def test_a_sync_serves_the_new_commit_while_a_running_run_finishes_on_the_old_one(srv, tools, tools_repo, tmp_path):
    old = tools_repo.head()
    gate = tmp_path / "gate"
    run = srv.submit("tools:slow-tool", {"gate": str(gate)})
    started = sse_until(srv, f"/runs/{run['id']}/events", lambda e: e["event"] == "step.output")
    assert started[-1]["data"]["data"]["line"] == f"start v1 rev={old}"

    new = write_tools_version(tools_repo, "v2")
    synced = srv.post("/sources/tools/sync")
    assert synced.status_code == 200, synced.text
    assert synced.json()["changed"] is True and synced.json()["previous_revision"] == old
    job = srv.get("/jobs/tools:slow-tool").json()["job"]
    assert job["revision"] == new and job["description"] == "slow v2" and "job-v2" in job["steps"][0]["run"]

    gate.touch()
    finished = srv.wait_finished(run["id"])
    assert finished["status"] == "succeeded" and finished["revision"] == old
    assert output_lines(srv, run["id"])[-1] == "end v1 job-v1"

    after = srv.submit("tools:slow-tool", {"gate": str(gate)})
    assert srv.wait_finished(after["id"])["revision"] == new
    assert output_lines(srv, after["id"]) == [f"start v2 rev={new}", "end v2 job-v2"]


UNSAFE = [
    ("ext", {"url": "ext::sh -c touch% {marker}"}, "url"),
    ("ext-upper", {"url": "EXT::sh -c touch% {marker}"}, "url"),
    ("fd", {"url": "fd::3"}, "url"),
    ("helper", {"url": "foo::file://{repo}"}, "url"),
    ("upload-pack", {"url": "--upload-pack=touch {marker}"}, "url"),
    ("short-u", {"url": "-utouch {marker}"}, "url"),
    ("smuggled", {"url": "file://{repo} --upload-pack=touch {marker}"}, "url"),
    ("ssh-option", {"url": "ssh://-oProxyCommand=touch%20{marker}/x"}, "url"),
    ("http", {"url": "http://127.0.0.1:1/x.git"}, "url"),
    ("plain-path", {"url": "{repo}"}, "url"),
    ("ref-output", {"url": "file://{repo}", "ref": "--output={marker}"}, "ref"),
    ("ref-h", {"url": "file://{repo}", "ref": "-h"}, "ref"),
    ("ref-traversal", {"url": "file://{repo}", "ref": "../../etc/passwd"}, "ref"),
    ("ref-absolute", {"url": "file://{repo}", "ref": "/dev/zero"}, "ref"),
    ("ref-dotdot", {"url": "file://{repo}", "ref": "refs/heads/../../x"}, "ref"),
    ("ref-space", {"url": "file://{repo}", "ref": "main --upload-pack=x"}, "ref"),
]


@pytest.mark.parametrize("case,fields,field", UNSAFE, ids=[c[0] for c in UNSAFE])
def test_unsafe_urls_and_refs_are_refused_and_leave_nothing_on_disk(srv, tools_repo, tmp_path, case, fields, field):
    marker = tmp_path / "pwned"
    name = f"unsafe-{case}"
    body = {
        "type": "git",
        "name": name,
        **{k: v.format(marker=marker, repo=tools_repo.path) for k, v in fields.items()},
    }
    response = srv.post("/sources", body)
    assert response.status_code == 422, response.text
    assert response.headers["Content-Type"] == "application/problem+json"
    problem = response.json()
    assert problem["type"] == "urn:flwd:error:unsafe-source" and problem["errors"][0]["field"] == field
    assert srv.get(f"/sources/{name}").status_code == 404
    assert not (srv.data_dir / "sources" / name).exists()
    assert not (srv.data_dir / "sources" / ".locks" / f"{name}.lock").exists()
    assert not marker.exists(), "the URL's command ran"


def test_duplicates_missing_paths_and_failed_clones_change_nothing(srv, tools, tools_repo, tmp_path):
    before = srv.get("/sources/tools").json()["source"]
    again = srv.post("/sources", {"type": "git", "name": "tools", "url": tools_repo.url, "ref": "main"})
    assert again.status_code == 409 and "already exists" in again.json()["detail"]
    bundled = srv.post("/sources", {"type": "local", "name": "examples", "path": str(tmp_path)})
    assert bundled.status_code == 409
    missing = srv.post("/sources", {"type": "local", "name": "nowhere", "path": str(tmp_path / "nope")})
    assert missing.status_code == 422 and "does not exist" in missing.json()["detail"]
    relative = srv.post("/sources", {"type": "local", "name": "relative", "path": "some/where"})
    assert relative.status_code == 422 and "absolute" in relative.json()["detail"]
    no_repo = srv.post("/sources", {"type": "git", "name": "no-repo", "url": f"file://{tmp_path}/none"})
    assert no_repo.status_code == 422 and "does not appear to be a git repository" in no_repo.json()["detail"]
    no_ref = srv.post("/sources", {"type": "git", "name": "no-ref", "url": tools_repo.url, "ref": "nope"})
    assert no_ref.status_code == 422 and no_ref.json()["errors"][0]["field"] == "ref"
    for name in ("nowhere", "relative", "no-repo", "no-ref"):
        assert not (srv.data_dir / "sources" / name).exists()
    shape = srv.post("/sources", {"type": "svn", "name": "x", "url": "https://x"})
    assert shape.status_code == 422 and shape.json()["errors"][0]["field"] == "type"
    assert srv.post("/sources", data="{}", headers={"Content-Type": "text/plain"}).status_code == 415
    assert srv.get("/sources/tools").json()["source"] == before


def test_a_job_name_in_two_sources_is_a_409_listing_the_candidates(srv, tools, tmp_path):
    folder = tmp_path / "mirror"
    (folder / "jobs").mkdir(parents=True)
    (folder / "jobs" / "shared-job.yaml").write_text(job_yaml("shared-job", "echo mirror"))
    added = srv.post("/sources", {"type": "local", "name": "mirror", "path": str(folder)})
    assert added.status_code == 201 and added.headers["Location"] == "/sources/mirror"
    try:
        ambiguous = srv.post("/runs", {"job": "shared-job", "args": {}})
        assert ambiguous.status_code == 409
        assert ambiguous.json()["candidates"] == ["tools:shared-job", "mirror:shared-job"]
        run = srv.submit("shared-job", {}, source="mirror")
        assert output_lines(srv, run["id"]) == ["mirror"]
    finally:
        assert srv.delete("/sources/mirror").status_code == 204
    assert srv.post("/plans", {"job": "shared-job", "args": {}}).json()["plan"]["source"] == "tools"


def test_concurrent_syncs_across_workers_all_succeed(srv, tools, tools_repo):
    head = tools_repo.head()
    results: list[Any] = []

    def sync() -> None:
        try:
            response = requests.post(f"{srv.url}/sources/tools/sync", headers=srv.headers(), timeout=120)
            results.append((response.status_code, response.json().get("source", {}).get("revision")))
        except requests.RequestException as exc:  # collected and asserted below
            results.append(exc)

    threads = [threading.Thread(target=sync) for _ in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(180)
    assert results == [(200, head)] * 10
    assert "Traceback" not in srv.logs()


def test_a_failed_sync_keeps_the_last_good_revision_serving(srv, tools_repo, tmp_path):
    repo = GitRepo(tmp_path / "fragile")
    repo.write("jobs/fragile-job.yaml", job_yaml("fragile-job", 'echo "fragile at $FLWD_SOURCE_REVISION"'))
    good = repo.commit("one")
    assert srv.post("/sources", {"type": "git", "name": "fragile", "url": repo.url}).status_code == 201
    after = last_event_id(srv)

    shutil.move(repo.path, tmp_path / "gone")
    failed = srv.post("/sources/fragile/sync")
    assert failed.status_code == 502 and failed.json()["type"] == "urn:flwd:error:source-error"
    source = srv.get("/sources/fragile").json()["source"]
    assert (
        source["revision"] == good and source["last_error"] and [j["name"] for j in source["jobs"]] == ["fragile-job"]
    )
    run = srv.submit("fragile-job", {})
    assert srv.wait_finished(run["id"])["revision"] == good
    assert output_lines(srv, run["id"]) == [f"fragile at {good}"]

    events = sse_until(srv, f"/events?after={after}", lambda e: e["event"] == "source.failed")
    failure = events[-1]["data"]
    assert failure["run_id"] is None and failure["data"]["source"] == "fragile" and failure["data"]["revision"] == good

    shutil.move(tmp_path / "gone", repo.path)
    healed = srv.post("/sources/fragile/sync")
    assert healed.status_code == 200 and healed.json()["source"]["last_error"] is None
    synced = sse_until(srv, f"/events?after={after}", lambda e: e["event"] == "source.synced")
    assert synced[-1]["data"]["run_id"] is None and synced[-1]["data"]["data"]["revision"] == good
    assert srv.delete("/sources/fragile").status_code == 204
    assert not (srv.data_dir / "sources" / "fragile").exists()
    assert srv.get("/sources/fragile").status_code == 404


def test_the_cli_twins_work_locally_and_remotely_with_the_same_answers(srv, tools, tmp_path):
    folder = tmp_path / "cli-folder"
    (folder / "jobs").mkdir(parents=True)
    (folder / "jobs" / "cli-job.yaml").write_text(job_yaml("cli-job", "echo cli"))

    def flwd(*args: str, remote: bool) -> subprocess.CompletedProcess[str]:
        where = ["--server", srv.url, "--token", "dev-token"] if remote else ["--config", str(srv.config_path)]
        command = [sys.executable, "-m", "flwd_cli", ":sources", args[0], *where, *args[1:]]
        env = {k: v for k, v in os.environ.items() if not k.startswith("FLWD_")}  # the config file decides
        return subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=tmp_path, env=env)

    added = flwd("add", "cli-folder", "--path", str(folder), remote=False)  # another process, the same database
    assert added.returncode == 0, added.stderr
    # The server's workers learn it from the database, on the job-resolution path itself.
    for _ in range(10):
        assert srv.post("/plans", {"job": "cli-job", "args": {}}).json()["plan"]["source"] == "cli-folder"
    assert srv.get("/sources/cli-folder").json()["source"]["jobs"][0]["name"] == "cli-job"

    local = json.loads(flwd("list", "--json", remote=False).stdout)
    remote = json.loads(flwd("list", "--json", remote=True).stdout)
    assert local == remote and "cli-folder" in [s["name"] for s in remote["sources"]]
    table = flwd("list", remote=True).stdout
    assert "cli-folder" in table and "tools" in table

    synced = flwd("sync", "tools", remote=True)
    assert synced.returncode == 0 and "tools: unchanged at" in synced.stdout
    refused = flwd("add", "evil", "--url", "ext::sh -c id", remote=True)
    assert refused.returncode == 2 and "transport" in refused.stderr
    protected = flwd("remove", "examples", remote=True)
    assert protected.returncode == 2 and "bundled" in protected.stderr
    removed = flwd("remove", "cli-folder", remote=True)
    assert removed.returncode == 0 and srv.get("/sources/cli-folder").status_code == 404
    for _ in range(10):
        assert srv.post("/plans", {"job": "cli-job", "args": {}}).status_code == 404


def test_many_operations_leave_no_git_process_and_no_growing_descriptors(srv, tools):
    def fds() -> dict[int, int]:
        return {pid: len(list(Path(f"/proc/{pid}/fd").iterdir())) for pid in srv.worker_pids()}

    def operate(times: int) -> None:
        for _ in range(times):
            assert srv.post("/sources/tools/sync").status_code == 200
            assert srv.get("/sources").status_code == 200
            assert srv.post("/plans", {"job": "tools:tool-hello", "args": {}}).status_code == 200

    operate(10)
    before = fds()
    operate(40)
    assert git_processes(pgid=srv.proc.pid) == []
    after = fds()
    assert after.keys() == before.keys()
    for pid, count in after.items():
        assert count <= before[pid] + 4, (pid, before[pid], count)


def test_sources_from_the_config_and_the_api_survive_a_restart(start_server, make_git_repo, tmp_path):
    cfg_repo = make_git_repo("cfg")
    cfg_repo.write("jobs/cfg-job.yaml", job_yaml("cfg-job", 'echo "cfg at $FLWD_SOURCE_REVISION"'))
    cfg_commit = cfg_repo.commit("cfg")
    api_repo = make_git_repo("api")
    api_repo.write("jobs/api-job.yaml", job_yaml("api-job", 'echo "api at $FLWD_SOURCE_REVISION"'))
    api_commit = api_repo.commit("api")
    folder = tmp_path / "folder"
    (folder / "jobs").mkdir(parents=True)
    (folder / "jobs" / "folder-job.yaml").write_text(job_yaml("folder-job", "echo folder"))
    config_sources = [
        {"type": "git", "name": "cfg", "url": cfg_repo.url, "ref": "main"},
        {"type": "local", "name": "folder", "path": str(folder)},
    ]

    server = start_server({"sources": config_sources})
    listed = {s["name"]: s for s in server.get("/sources").json()["sources"]}
    assert (
        listed["cfg"]["origin"] == "config"
        and listed["cfg"]["revision"] == cfg_commit
        and listed["cfg"]["removable"] is False
    )
    assert server.delete("/sources/cfg").status_code == 409
    assert (
        server.post("/sources", {"type": "git", "name": "api", "url": api_repo.url, "ref": "main"}).status_code == 201
    )

    server.stop()
    server.start()
    names = [s["name"] for s in server.get("/sources").json()["sources"]]
    assert names == ["examples", "cfg", "folder", "api"]
    for job, commit in (("api-job", api_commit), ("cfg-job", cfg_commit)):
        run = server.submit(job, {})
        finished = server.wait_finished(run["id"])
        assert finished["status"] == "succeeded" and finished["revision"] == commit
    assert server.get("/jobs/folder-job").status_code == 200

    server.stop()
    server.config["sources"] = config_sources[1:]  # cfg dropped from the config file
    server.start()
    names = [s["name"] for s in server.get("/sources").json()["sources"]]
    assert names == ["examples", "folder", "api"]
    assert not (server.data_dir / "sources" / "cfg").exists()
