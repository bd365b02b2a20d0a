"""SIGTERM to the gunicorn master (as systemd sends it): no new runs, running ones finish within
shutdown_grace or end cancelled with a reason, and nothing they started is left behind."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import sqlite3
import time
from pathlib import Path

from tests.fixtures.helpers import wait_until

FORKY = """name: forky
description: Start a grandchild and wait for a long time
timeout: 600
steps:
  - name: wait
    run: 'echo started; sleep 300 & sleep 300; wait'
"""


def processes_of(run_id: str) -> list[int]:
    """Every process whose environment says it belongs to ``run_id``."""
    marker = f"FLWD_RUN_ID={run_id}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if marker in (entry / "environ").read_bytes().split(b"\0"):
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def stored(server, run_id: str) -> tuple[str, str | None, dict]:
    db = sqlite3.connect(server.data_dir / "flwd.db", timeout=10)
    try:
        status, reason = db.execute("SELECT status, reason FROM runs WHERE id = ?", (run_id,)).fetchone()
        (data,) = db.execute("SELECT data FROM events WHERE run_id = ? AND type = 'run.finished'", (run_id,)).fetchone()
    finally:
        db.close()
    return status, reason, json.loads(data)


def wait_running(server, run_id: str) -> None:
    wait_until(lambda: has_output(server, run_id), 20, 0.05, "the job's first line")


def has_output(server, run_id: str) -> bool:
    with server.get(f"/runs/{run_id}/events", stream=True, timeout=(5, 5)) as response:
        for line in response.iter_lines(chunk_size=None):
            if line.startswith(b"event: step.output"):
                return True
            if line.startswith(b"event: run.finished"):
                return False
    return False


def test_a_run_that_finishes_within_the_grace_succeeds_after_sigterm(start_server):
    server = start_server({"workers": 2, "threads": 8, "shutdown_grace": 15})
    run = server.submit("slow", {"seconds": 2})
    wait_running(server, run["id"])
    stopping = time.monotonic()
    assert server.stop(signal.SIGTERM, timeout=40) == 0
    took = time.monotonic() - stopping
    status, reason, finished = stored(server, run["id"])
    assert (status, finished["status"], finished["exit_code"]) == ("succeeded", "succeeded", 0)
    assert reason is None
    assert took < 15, f"the server waited {took:.1f}s although its only run ended after about 2 s"


def test_a_run_still_going_after_the_grace_is_cancelled_with_a_reason_and_leaves_no_process(start_server, tmp_path):
    (tmp_path / "ops" / "jobs").mkdir(parents=True)
    (tmp_path / "ops" / "jobs" / "forky.yaml").write_text(FORKY)
    grace = 2
    server = start_server(
        {
            "workers": 1,
            "threads": 8,
            "shutdown_grace": grace,
            "sources": [{"type": "local", "name": "ops", "path": str(tmp_path / "ops")}],
        }
    )
    run = server.submit("forky")
    wait_running(server, run["id"])
    children = wait_until(
        lambda: len(processes_of(run["id"])) >= 3 and processes_of(run["id"]), 10, 0.05, "the job's processes"
    )
    stream = server.get(f"/runs/{run['id']}/events", stream=True, timeout=(5, 10))
    stopping = time.monotonic()
    assert server.stop(signal.SIGTERM, timeout=grace + 30) == 0
    took = time.monotonic() - stopping
    # The open event stream was ended by the shutdown, not left hanging.
    assert b"event: run.queued" in b"".join(stream.iter_content(None))
    stream.close()
    status, reason, finished = stored(server, run["id"])
    assert status == "cancelled" and finished["status"] == "cancelled"
    assert (
        "shutting down" in finished["reason"]
        and f"{grace}s grace period" in finished["reason"]
        and finished["reason"] == reason
    )
    assert grace <= took < grace + 20
    assert processes_of(run["id"]) == []
    for pid in children:
        assert not Path(f"/proc/{pid}").exists() or b"Z" in Path(f"/proc/{pid}/stat").read_bytes().split(b")")[-1][:3]
    logs = [json.loads(line) for line in server.logs().splitlines() if line.startswith("{")]
    assert any(line.get("event") == "server.shutdown" and line.get("running") == 1 for line in logs)


def test_a_submit_that_arrives_during_shutdown_gets_a_503_problem(start_server):
    server = start_server({"workers": 1, "threads": 8, "shutdown_grace": 2})
    body = json.dumps({"job": "noop"}).encode()
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        # A kept-alive connection the worker has taken (it answered on it) ...
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert read_response(sock)[0].startswith(b"HTTP/1.1 200")
        # ... and a client in the middle of sending its next request when the server is told to stop.
        sock.sendall(
            b"POST /runs HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer dev-token\r\nContent-Type: application/json\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body[:5]
        )
        assert server.proc is not None
        os.kill(server.proc.pid, signal.SIGTERM)
        wait_until(lambda: '"server.shutdown"' in server.logs(), 10, 0.02, "the worker to begin its shutdown")
        sock.sendall(body[5:])
        head, payload = read_response(sock)
    assert head.startswith(b"HTTP/1.1 503"), head
    assert b"Content-Type: application/problem+json" in head and b"Retry-After: " in head
    problem = json.loads(payload)
    assert problem["status"] == 503 and "shutting down" in problem["detail"]
    assert server.stop(timeout=30) == 0


def read_response(sock: socket.socket) -> tuple[bytes, bytes]:
    """One HTTP/1.1 response with a Content-Length body: (head, body)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(
        next(line.split(b":", 1)[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:"))
    )
    while len(body) < length:
        chunk = sock.recv(65536)
        assert chunk, data
        body += chunk
    return head, body


def forky_running(start_server, tmp_path):
    """A server with a run of FORKY going, its processes started."""
    (tmp_path / "ops" / "jobs").mkdir(parents=True)
    (tmp_path / "ops" / "jobs" / "forky.yaml").write_text(FORKY)
    server = start_server(
        {"workers": 1, "threads": 8, "sources": [{"type": "local", "name": "ops", "path": str(tmp_path / "ops")}]}
    )
    run = server.submit("forky")
    wait_running(server, run["id"])
    wait_until(lambda: len(processes_of(run["id"])) >= 3, 10, 0.05, "the job's processes")
    return server, run


def test_after_a_crash_the_next_start_ends_the_run_lost_and_kills_what_it_left(start_server, tmp_path):
    server, run = forky_running(start_server, tmp_path)
    server.kill()  # SIGKILL to master and workers: no shutdown code runs
    assert processes_of(run["id"]), "the job's own session outlives a killed server"
    server.start()
    status, reason, finished = stored(server, run["id"])
    assert status == "lost" and finished["status"] == "lost" and "stopped" in reason
    wait_until(lambda: processes_of(run["id"]) == [], 5, 0.05, "the lost run's processes to be killed")


def gone(pid: int) -> bool:
    """Whether a process has exited (a zombie nobody reaps counts as gone)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except OSError:
        return True


def refuses(server) -> bool:
    try:
        socket.create_connection((server.host, server.port), timeout=1).close()
    except ConnectionRefusedError:
        return True
    return False


def test_a_sigkilled_master_leaves_no_worker_on_the_port_and_the_worker_s_run_ends_lost(start_server, tmp_path):
    server, run = forky_running(start_server, tmp_path)
    workers = server.worker_pids()
    try:
        master = server.proc
        os.kill(master.pid, signal.SIGKILL)  # the master alone: its worker stays
        master.wait(10)
        start = time.monotonic()
        wait_until(lambda: refuses(server), 5, 0.05, "the port to refuse connections")
        refused_after = time.monotonic() - start
        wait_until(lambda: all(gone(pid) for pid in workers), 15, 0.05, "the orphaned worker to exit")
        exited_after = time.monotonic() - start
        status, reason, finished = stored(server, run["id"])
        assert status == "lost" and finished["status"] == "lost" and "master" in reason, (status, reason)
        assert processes_of(run["id"]) == []
        print(f"port refused after {refused_after:.2f}s, worker gone after {exited_after:.2f}s")
    finally:  # before the fix the orphan lingered: leave nothing behind whatever happens
        for pid in workers + processes_of(run["id"]):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    server.stop()
    server.start()  # a new server binds the same port
    assert server.run_status(run["id"]) == "lost"
