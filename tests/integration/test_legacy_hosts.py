"""``flwd_server.wsgi:app`` under the other WSGI hosts the deployment docs configure: uWSGI (preforking: the app is
built in its master, which forks the workers in C, with and without Python's at-fork hooks) and Apache's mod_wsgi.
Each serves the reference page's calls, caps event streams below the threads it really runs, and a run it was
running when it was killed ends ``lost``."""

from __future__ import annotations

import pwd
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.fixtures.helpers import read_stream, wait_until
from tests.fixtures.wsgi_hosts import HEADERS, HostProcess, modwsgi, shared_dir, uwsgi

pytestmark = pytest.mark.integration

UWSGI_THREADS = 8  # per worker, two workers; flwd's own `threads` setting stays at its default (32)


def reference_calls(server: HostProcess) -> list[dict]:
    """The calls of the reference page; returns the run's events, read to ``run.finished``."""
    jobs = server.get("/jobs")
    assert jobs.status_code == 200, jobs.text
    assert "hello-world" in [job["name"] for job in jobs.json()["jobs"]]
    body = {"job": "hello-world", "args": {"name": "Alice"}}
    plan = server.post("/plans", body)
    assert plan.status_code == 200, plan.text
    assert plan.json()["plan"]["args"]["name"] == "Alice"
    run = server.post("/runs", body)
    assert run.status_code == 202, run.text
    events = read_stream(f"{server.url}/runs/{run.json()['run']['id']}/events", HEADERS, timeout=30)
    assert [e["data"]["data"]["line"] for e in events if e["event"] == "step.output"] == ["Hello, Alice"]
    assert events[-1]["event"] == "run.finished", events
    assert events[-1]["data"]["data"]["status"] == "succeeded", events[-1]
    return events


def streams_until_refused(server: HostProcess, most: int) -> tuple[list[requests.Response], requests.Response]:
    """Open ``GET /events`` streams until one is refused; returns the open ones and the refusal."""
    open_streams: list[requests.Response] = []
    for _ in range(most):
        response = requests.get(server.url + "/events", headers=HEADERS, stream=True, timeout=(5, 10))
        if response.status_code != 200:
            return open_streams, response
        open_streams.append(response)
    for stream in open_streams:
        stream.close()
    raise AssertionError(f"{len(open_streams)} streams were all accepted: the cap is not below the host's threads")


def check_stream_cap(server: HostProcess, threads: int, processes: int) -> None:
    """Past ``sse.max_streams`` (threads - 4 per process) a stream is a 503 problem, and other requests still run."""
    cap = max(1, threads - 4)
    accepted, refused = streams_until_refused(server, processes * cap + 1)
    try:
        assert cap <= len(accepted) <= processes * cap, len(accepted)
        assert refused.status_code == 503, refused.text
        assert refused.headers["Content-Type"] == "application/problem+json"
        assert refused.json()["status"] == 503
        for _ in range(2 * processes):
            assert requests.get(server.url + "/healthz", timeout=5).status_code == 200
        assert server.get("/jobs", timeout=5).status_code == 200
    finally:
        for stream in accepted:
            stream.close()


def recovers_a_killed_run(make_host) -> None:
    """Kill every process of the host while a run runs; started again on the same data dir, the run is lost."""
    first: HostProcess = make_host("first").start()
    try:
        run = first.post("/runs", {"job": "slow", "args": {"seconds": 120}})
        assert run.status_code == 202, run.text
        run_id = run.json()["run"]["id"]
        wait_until(
            lambda: first.get(f"/runs/{run_id}").json()["run"]["status"] == "running", 30, 0.05, "the run to start"
        )
    finally:
        first.kill()
    second: HostProcess = make_host("second").start()
    try:

        def ended() -> dict | None:
            run = second.get(f"/runs/{run_id}").json()["run"]
            return run if run["status"] != "running" else None

        run = wait_until(ended, 30, 0.1, "the killed run to end")
        assert run["status"] == "lost", run
        assert run["reason"], run
        finished = read_stream(f"{second.url}/runs/{run_id}/events", HEADERS, timeout=10)[-1]
        assert finished["event"] == "run.finished" and finished["data"]["data"]["status"] == "lost"
    finally:
        second.stop()


# -- uWSGI ---------------------------------------------------------------------------------------------------------

UWSGI_MODES = {
    "forks-without-hooks": (),  # uWSGI's default: os.register_at_fork hooks do not run in the workers
    "py-call-osafterfork": ("--py-call-osafterfork",),  # they do
}


@pytest.fixture(scope="module", params=sorted(UWSGI_MODES))
def uwsgi_server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[HostProcess]:
    root = tmp_path_factory.mktemp(f"uwsgi-{request.param}")
    server = uwsgi(root, root / "data", "--threads", str(UWSGI_THREADS), *UWSGI_MODES[request.param])
    server.start()
    yield server
    server.stop()


def test_uwsgi_serves_the_reference_page_from_its_workers(uwsgi_server):
    master = uwsgi_server.proc.pid
    events = reference_calls(uwsgi_server)
    owner = int(events[[e["event"] for e in events].index("run.started")]["data"]["data"]["owner"].split(":")[1])
    assert owner != master and owner in uwsgi_server.group_pids(), (owner, master)  # a worker's own runner ran it


def test_uwsgi_caps_streams_below_its_threads(uwsgi_server):
    check_stream_cap(uwsgi_server, UWSGI_THREADS, processes=2)


def test_uwsgi_recovers_a_killed_run_as_lost(tmp_path):
    def make(name: str) -> HostProcess:
        mode = "forks-without-hooks" if name == "first" else "py-call-osafterfork"
        return uwsgi(tmp_path, tmp_path / "data", "--threads", "4", *UWSGI_MODES[mode], name=f"uwsgi-{name}")

    recovers_a_killed_run(make)


def test_uwsgi_without_threads_refuses_to_start(tmp_path):
    for args in ((), ("--enable-threads",)):
        server = uwsgi(tmp_path, tmp_path / "data", *args)
        result = subprocess.run(
            server.command,
            env={"FLWD_CONFIG": str(server.config), "PATH": "/usr/bin:/bin"},
            cwd=server.cwd,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode != 0, result.stdout[-2000:]
        assert "Start uWSGI with --threads 8" in result.stdout + result.stderr


# -- mod_wsgi ------------------------------------------------------------------------------------------------------

MODWSGI_THREADS = 5  # mod_wsgi-express's default: one daemon process of 5 threads


@pytest.fixture(scope="module")
def modwsgi_server() -> Iterator[HostProcess]:
    with shared_dir("modwsgi") as root:
        server = modwsgi(root, root / "data")
        server.start()
        yield server
        server.stop()


def test_modwsgi_serves_the_reference_page_as_nobody(modwsgi_server):
    events = reference_calls(modwsgi_server)
    owner = int(events[[e["event"] for e in events].index("run.started")]["data"]["data"]["owner"].split(":")[1])
    assert Path(f"/proc/{owner}").stat().st_uid == pwd.getpwnam("nobody").pw_uid  # Apache's daemon process ran it


def test_modwsgi_caps_streams_below_its_threads(modwsgi_server):
    check_stream_cap(modwsgi_server, MODWSGI_THREADS, processes=1)


def test_modwsgi_recovers_a_killed_run_as_lost():
    with shared_dir("modwsgi-lost") as root:
        recovers_a_killed_run(lambda name: modwsgi(root, root / "data", name=f"mod_wsgi-{name}"))
