"""Faults through a real server: a full disk, a disk that turns read-only, huge output, a client that never reads.

SIGKILL of a worker and of the whole server mid-run is in test_execution.py; a git remote
that disappears (moved away) in test_sources.py, deleted outright here.

The disk faults need root (to mount): a size-limited tmpfs for the full disk, an ext4
image on a loop device for the read-only one (mounted ``errors=remount-ro`` and then
aborted with ``mount -o remount,abort``, which is how the kernel turns a failing disk
read-only under a running program: a plain ``remount,ro`` is refused while SQLite holds
its files open for writing).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest
import requests

from tests.fixtures.git import job_yaml
from tests.fixtures.helpers import read_stream, require_tool, wait_until
from tests.fixtures.mounts import mount, mounted, need_root_mounts, read_only_bind

pytestmark = pytest.mark.integration


def problem(response: requests.Response, status: int) -> dict:
    assert response.status_code == status, (response.status_code, response.text[:300])
    assert response.headers["Content-Type"] == "application/problem+json"
    return response.json()


def local_source(tmp_path: Path, jobs: dict[str, str]) -> dict:
    folder = tmp_path / "fault-jobs"
    (folder / "jobs").mkdir(parents=True, exist_ok=True)
    for name, text in jobs.items():
        (folder / "jobs" / f"{name}.yaml").write_text(text)
    return {"type": "local", "name": "faults", "path": str(folder)}


def integrity(db: Path) -> str:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return conn.execute("PRAGMA integrity_check").fetchone()[0]
    finally:
        conn.close()


def fill(directory: Path) -> Path:
    """Take every free byte of the filesystem holding ``directory``."""
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for size in (1 << 20, 4096, 1):
            with contextlib.suppress(OSError):
                while os.write(fd, b"\0" * size):
                    pass
    finally:
        os.close(fd)
    return filler


def test_a_full_disk_gives_503_problems_corrupts_nothing_and_recovers_when_space_returns(start_server, tmp_path):
    need_root_mounts()
    with mounted("-t", "tmpfs", "-o", "size=6m", "tmpfs", target=tmp_path / "small") as small:
        db = small / "flwd.db"
        server = start_server({"db_path": str(db), "workers": 2})
        before = server.submit("hello-world", {"name": "Before"})
        assert server.wait_finished(before["id"])["status"] == "succeeded"
        acknowledged = [e["id"] for e in server.events(before["id"])]

        filler = fill(small)
        refused = None
        for _ in range(3000):  # the WAL may still have room for a few commits
            response = server.post("/runs", {"job": "noop"})
            if response.status_code != 202:
                refused = response
                break
        assert refused is not None, "the database kept accepting runs on a full disk"
        body = problem(refused, 503)
        assert body["type"] == "urn:flwd:error:storage-unavailable" and "cannot be written" in body["detail"]
        assert server.get(f"/runs/{before['id']}").json()["run"]["status"] == "succeeded"  # reads go on

        filler.unlink()  # space again: the very next writes work, with no restart

        def accepted():
            response = server.post("/runs", {"job": "hello-world", "args": {"name": "After"}})
            return response.json()["run"] if response.status_code == 202 else None

        after = wait_until(accepted, 20, 0.2, "a run to be accepted once the disk has room")
        assert server.wait_finished(after["id"], timeout=60)["status"] == "succeeded"
        assert [e["event"] for e in server.events(after["id"])][-1] == "run.finished"
        assert [e["id"] for e in server.events(before["id"])] == acknowledged  # nothing acknowledged was lost
        assert server.stop() == 0
        assert integrity(db) == "ok"
    logs = server.logs()
    assert "database or disk is full" in logs and '"status": 500' not in logs
    assert "Traceback" not in logs, [line for line in logs.splitlines() if "Traceback" in line]


def test_a_disk_that_turns_read_only_gives_503_problems_and_the_data_survives_a_restart(start_server, tmp_path):
    need_root_mounts()
    require_tool("mkfs.ext4")
    image = tmp_path / "disk.img"
    with open(image, "wb") as out:
        out.truncate(64 * 1024 * 1024)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(image)], check=True, capture_output=True)
    target = tmp_path / "disk"
    with mounted("-o", "loop,errors=remount-ro", str(image), target=target):
        db = target / "flwd.db"
        # synchronous=full: a commit is on the disk before it is acknowledged.  Under the default
        # (normal) a disk that dies takes the commits not yet written back with it, like a power cut.
        server = start_server({"db_path": str(db), "workers": 2, "db_synchronous": "full"})
        before = server.submit("hello-world", {"name": "Before"})
        assert server.wait_finished(before["id"])["status"] == "succeeded"
        acknowledged = [e["id"] for e in server.events(before["id"])]

        mount("-o", "remount,abort", str(target))  # the kernel's reaction to a failing disk
        body = problem(server.post("/runs", {"job": "noop"}), 503)
        assert body["type"] == "urn:flwd:error:storage-unavailable"
        for path in ("/runs", f"/runs/{before['id']}", "/healthz"):
            status = server.get(path).status_code
            assert status in (200, 503), (path, status)  # a read either works or is a clear 503: never a 500 or a hang
        assert server.stop() == 0
    # The fix: the disk checked and mounted again.  Everything acknowledged is there, intact.
    subprocess.run(["e2fsck", "-f", "-y", str(image)], capture_output=True)
    with mounted("-o", "loop", str(image), target=target):
        assert integrity(target / "flwd.db") == "ok"
        server.start()
        assert [e["id"] for e in server.events(before["id"])] == acknowledged
        after = server.submit("hello-world", {"name": "After"})
        assert server.wait_finished(after["id"], timeout=30)["status"] == "succeeded"
        server.stop()
    logs = server.logs()
    assert "the database cannot be written: disk I/O error" in logs and '"status": 500' not in logs
    assert "Traceback" not in logs, [line for line in logs.splitlines() if "Traceback" in line]


def test_a_data_dir_that_turns_read_only_gives_503_problems_and_failed_runs_and_recovers_without_a_restart(
    start_server, make_git_repo, tmp_path
):
    need_root_mounts()
    repo = make_git_repo("readonly")
    repo.write("jobs/ro-job.yaml", job_yaml("ro-job", "echo from git"))
    repo.commit("one")
    folder = tmp_path / "folder-jobs"
    (folder / "jobs").mkdir(parents=True)
    (folder / "jobs" / "folder-job.yaml").write_text(job_yaml("folder-job", "echo from a folder"))
    server = start_server({"workers": 2})  # the database is DATA_DIR/flwd.db: on the same mount
    assert server.post("/sources", {"type": "git", "name": "kept", "url": repo.url}).status_code == 201
    writes = [
        ("post", "/sources", {"type": "git", "name": "fresh", "url": repo.url}, 201, "fresh"),
        ("post", "/sources", {"type": "local", "name": "folder", "path": str(folder)}, 201, "folder"),
        ("post", "/sources/kept/sync", None, 200, "kept"),
        ("delete", "/sources/kept", None, 204, "kept"),
    ]
    data = server.data_dir

    def call(method: str, path: str, body: dict | None) -> requests.Response:
        return server.post(path, body) if method == "post" else server.delete(path)

    details = []
    with read_only_bind(data):
        for method, path, body, _, name in writes:
            answer = problem(call(method, path, body), 503)
            assert answer["type"] == "urn:flwd:error:storage-unavailable", answer
            lock = data / "sources" / ".locks" / f"{name}.lock"
            assert answer["detail"] == f"source {name!r}: could not open its lock file {lock}: read-only file system"
            details.append(answer["detail"])
        for job in ("hello-world", "ro-job"):
            run = server.submit(job, {"name": "RO"} if job == "hello-world" else {})  # the database still writes
            ended = server.wait_finished(run["id"])
            assert ended["status"] == "failed", ended
            workdir = data / "work" / run["id"]
            assert ended["reason"] == f"could not create the run's work dir {workdir}: read-only file system"
            details.append(ended["reason"])
        assert [s["name"] for s in server.get("/sources").json()["sources"] if s["origin"] == "api"] == ["kept"]

    # Writable again: the same requests succeed on the same server, no restart.
    for method, path, body, status, _ in writes:
        response = call(method, path, body)
        assert response.status_code == status, (method, path, response.status_code, response.text[:300])
    for job in ("hello-world", "ro-job"):
        run = server.submit(job, {"name": "RW"} if job == "hello-world" else {})  # ro-job: now from 'fresh'
        assert server.wait_finished(run["id"])["status"] == "succeeded"
    logs = server.logs()
    assert '"status": 500' not in logs
    assert "Traceback" not in logs, [line for line in logs.splitlines() if "Traceback" in line]
    for detail in details:  # one line per failure, saying what failed and where (sync and delete share one)
        assert sum(detail in line for line in logs.splitlines()) == details.count(detail), detail


def test_a_source_folder_that_cannot_be_written_is_a_503_not_a_fault_of_the_source(start_server, make_git_repo):
    need_root_mounts()
    repo = make_git_repo("unwritable")
    repo.write("jobs/unwritable.yaml", job_yaml("unwritable", "echo hi"))
    repo.commit("one")
    server = start_server()
    folder = server.data_dir / "sources" / "fresh"
    folder.mkdir(parents=True)
    with read_only_bind(folder):  # the lock file (sources/.locks) can be written, the clone cannot
        answer = problem(server.post("/sources", {"type": "git", "name": "fresh", "url": repo.url}), 503)
        assert answer["type"] == "urn:flwd:error:storage-unavailable", answer
        assert answer["detail"] == f"source 'fresh': could not write its clone under {folder}: read-only file system"
    response = server.post("/sources", {"type": "git", "name": "fresh", "url": repo.url})
    assert response.status_code == 201, response.text
    logs = server.logs()
    assert "Traceback" not in logs and '"status": 500' not in logs
    assert sum(answer["detail"] in line for line in logs.splitlines()) == 1


def test_a_run_whose_source_files_cannot_be_exported_fails_saying_where(start_server, make_git_repo):
    need_root_mounts()
    repo = make_git_repo("exported")
    repo.write("jobs/exported.yaml", job_yaml("exported", 'test -f "$FLWD_SOURCE_DIR/jobs/exported.yaml"'))
    commit = repo.commit("one")
    server = start_server()
    assert server.post("/sources", {"type": "git", "name": "kept", "url": repo.url}).status_code == 201
    revs = server.data_dir / "sources" / "kept" / "revs"
    shutil.rmtree(revs / commit)  # pruned, as after a sync: a run of that commit exports it again
    with read_only_bind(revs):
        run = server.submit("exported")
        ended = server.wait_finished(run["id"])
        assert ended["status"] == "failed", ended
        assert (
            ended["reason"]
            == f"source 'kept': could not export commit {commit} to {revs / commit}: read-only file system"
        )
    again = server.submit("exported")
    assert server.wait_finished(again["id"])["status"] == "succeeded"  # writable again: exported, no restart
    logs = server.logs()
    assert "Traceback" not in logs and '"status": 500' not in logs
    assert sum(ended["reason"] in line for line in logs.splitlines()) == 1


def worker_memory(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak RSS) of a process, in KiB."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return {name: int(fields[name].split()[0]) for name in ("VmRSS", "VmHWM")}


def owner_pid(server, run_id: str) -> int:
    events = read_stream(
        f"{server.url}/runs/{run_id}/events", server.headers(), until=lambda e: e["event"] == "run.started"
    )
    return int(next(e for e in events if e["event"] == "run.started")["data"]["data"]["owner"].split(":")[1])


ONE_LINE = "name: one-line\nsteps:\n  - run: 'head -c 52428800 /dev/zero | tr \"\\\\0\" x; echo; echo after'\n"
# 1 GiB of 1 KiB lines; dd passes it through and writes how many bytes it passed to a file of the test.
GIGABYTE = 'name: gigabyte\nsteps:\n  - run: \'yes "$(head -c 1023 /dev/zero | tr "\\\\0" y)" | head -c 1073741824 | dd bs=65536 2>{stats}\'\n'


def test_a_50_mb_line_and_1_gb_of_output_keep_the_worker_s_memory_bounded(start_server, tmp_path):
    limits = {"max_line_bytes": 65536, "max_output_bytes": 4 * 1024 * 1024}
    stats = tmp_path / "dd-stats.txt"
    jobs = {"one-line": ONE_LINE, "gigabyte": GIGABYTE.format(stats=stats)}
    server = start_server({"workers": 1, "limits": limits, "sources": [local_source(tmp_path, jobs)]})
    warm = server.submit("hello-world", {"name": "Warm"})
    server.wait_finished(warm["id"])
    pid = server.worker_pids()[0]
    baseline = worker_memory(pid)

    line_run = server.submit("one-line")
    assert owner_pid(server, line_run["id"]) == pid
    assert server.wait_finished(line_run["id"], timeout=60)["status"] == "succeeded"
    outputs = [e["data"]["data"] for e in server.events(line_run["id"]) if e["event"] == "step.output"]
    assert outputs[0]["truncated"] is True and len(outputs[0]["line"]) <= 65536 + 64
    assert [o["line"] for o in outputs[1:]] == ["after"]

    big_run = server.submit("gigabyte")
    started = time.monotonic()
    assert server.wait_finished(big_run["id"], timeout=180)["status"] == "succeeded"
    took = time.monotonic() - started
    assert "1073741824 bytes" in stats.read_text()  # the whole gigabyte went through flwd's pipe
    events = server.events(big_run["id"], timeout=60)
    stored = sum(len(e["data"]["data"]["line"]) for e in events if e["event"] == "step.output")
    assert stored <= limits["max_output_bytes"] + 65536  # the rest was counted, not stored
    peak = worker_memory(pid)["VmHWM"]
    growth_mb = (peak - baseline["VmHWM"]) / 1024
    print(f"1 GB of output in {took:.1f}s; worker peak RSS {baseline['VmHWM'] / 1024:.0f} -> {peak / 1024:.0f} MB")
    assert growth_mb < 48, f"the worker's peak RSS grew by {growth_mb:.0f} MB for 1 GB of output"


def test_a_client_that_never_reads_stalls_nothing_and_costs_bounded_memory(start_server):
    server = start_server({"workers": 1, "threads": 8, "sse": {"heartbeat": 1.0}})
    pid = server.worker_pids()[0]
    flood = server.submit("print-lots", {"lines": 300000})
    server.wait_finished(flood["id"], timeout=120)
    baseline = worker_memory(pid)["VmRSS"]

    # A raw client with a tiny receive buffer asks for every event since the start and never reads.
    stuck = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
    stuck.connect(("127.0.0.1", server.port))
    stuck.sendall(b"GET /events?after=0 HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer dev-token\r\n\r\n")
    try:
        # Its thread is now blocked writing: meanwhile the API answers at once and others follow live events.
        for _ in range(20):
            started = time.monotonic()
            assert server.get("/runs?limit=5").status_code == 200
            assert time.monotonic() - started < 1.0
        more = server.submit("print-lots", {"lines": 100000})
        follower = read_stream(f"{server.url}/runs/{more['id']}/events", server.headers(), timeout=60)
        assert follower[-1]["event"] == "run.finished"
        growth_mb = (worker_memory(pid)["VmRSS"] - baseline) / 1024
        assert growth_mb < 32, f"a client that never reads made the worker grow by {growth_mb:.0f} MB"
    finally:
        stuck.close()
    # Once it is gone, its slot comes back (the next write fails and the stream is closed).
    wait_until(
        lambda: "flwd_sse_clients 0" in server.get("/metrics").text, 30, 0.2, "the stream of the gone client to close"
    )


def test_a_git_remote_deleted_outright_fails_syncs_clearly_and_the_last_good_commit_keeps_serving(
    start_server, make_git_repo
):
    repo = make_git_repo("vanishing")
    repo.write("jobs/vanishing.yaml", job_yaml("vanishing", 'echo "at $FLWD_SOURCE_REVISION"'))
    good = repo.commit("one")
    server = start_server()
    assert server.post("/sources", {"type": "git", "name": "vanishing", "url": repo.url}).status_code == 201

    shutil.rmtree(repo.path)
    body = problem(server.post("/sources/vanishing/sync"), 502)
    assert "vanishing" in body["detail"]
    source = server.get("/sources/vanishing").json()["source"]
    assert source["revision"] == good and source["last_error"]
    run = server.submit("vanishing")
    assert server.wait_finished(run["id"])["revision"] == good
    lines = [e["data"]["data"]["line"] for e in server.events(run["id"]) if e["event"] == "step.output"]
    assert lines == [f"at {good}"]

    # Its copy on the server vanishing too: the source says so, and nothing answers a 500.
    shutil.rmtree(server.data_dir / "sources" / "vanishing")
    for method, path in (
        ("get", "/sources/vanishing"),
        ("get", "/jobs/vanishing"),
        ("post", "/sources/vanishing/sync"),
        ("get", "/jobs"),
    ):
        status = getattr(server, method)(path).status_code
        assert status < 500 or status in (502, 503), (method, path, status)
    assert '"status": 500' not in server.logs()
