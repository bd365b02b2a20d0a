"""No process a run starts outlives it (setsid, double forks included), and a run is capped in tasks and memory.

Through a real ``flwd :serve`` (and the local CLI) on this host's cgroups — the
groups live below the server's own, and every test leaves none behind — and
through the fallback for hosts without them (``policy.cgroups: false``): a
subreaper that adopts what steps leave behind.
"""

from __future__ import annotations

import os
import signal
import subprocess
import uuid

import pytest

from flwd_server.runs.cgroups import base_name, discover, leftover_groups
from tests.fixtures.helpers import local_flwd, wait_until

pytestmark = pytest.mark.integration

JOBS = {
    "escape": 'steps:\n  - run: \'setsid sleep "$FLWD_ARG_MARK" & (sleep "$FLWD_ARG_MARK" &) ; echo started\'\n',
    "escape-bare": "steps:\n  - run: '(setsid env -u FLWD_RUN_ID sleep \"$FLWD_ARG_MARK\" &) ; echo started'\n",
    "escape-then-wait": "steps:\n  - run: 'setsid sleep \"$FLWD_ARG_MARK\" & echo started; exec sleep 600'\n",
    "forky": "steps:\n  - run: 'for i in $(seq 1500); do sleep \"$FLWD_ARG_MARK\" & done; wait'\n",
    "greedy": "steps:\n  - run: 'python3 -c \"x = bytearray(200 << 20); x[::4096] = bytes(len(x[::4096]))\"'\n",
    "code": "steps:\n  - run: 'sh -c \"exit 3\" & wait $!; exit $?'\n",
}


def job_text(name: str, body: str) -> str:
    return f"name: {name}\nargs:\n  mark: {{type: string, default: '3600'}}\n{body}"


def start_contained(tmp_path_factory, use_cgroups: bool):
    from tests.fixtures.server import ServerProcess

    root = tmp_path_factory.mktemp("containment")
    (root / "src" / "jobs").mkdir(parents=True)
    for name, body in JOBS.items():
        (root / "src" / "jobs" / f"{name}.yaml").write_text(job_text(name, body))
    config = {
        "sources": [{"type": "local", "name": "c", "path": str(root / "src")}],
        "policy": {
            "max_processes": 64,
            "memory_bytes": 128 << 20,
            "allowed_downgrades": ["permissive", "disabled"],
            "cgroups": use_cgroups,
        },
    }
    return ServerProcess(root, config, dev=True, env={}).start()


@pytest.fixture(scope="module")
def capped(tmp_path_factory):
    """A server that contains and caps runs with cgroups."""
    server = start_contained(tmp_path_factory, use_cgroups=True)
    yield server
    server.stop()
    assert not leftover_groups(discover(), base_name(str(server.data_dir / "flwd.db"))), "cgroups were left behind"


@pytest.fixture(scope="module")
def adopting(tmp_path_factory):
    """A server told not to use cgroups: the fallback, a subreaper, as on a host without writable ones."""
    server = start_contained(tmp_path_factory, use_cgroups=False)
    yield server
    server.stop()


@pytest.fixture(params=["cgroups", "subreaper"])
def contained(request):
    return request.getfixturevalue("capped" if request.param == "cgroups" else "adopting")


def mark() -> str:
    """A unique sleep duration: ``pgrep -f`` finds exactly the processes of one test."""
    return f"3600.{uuid.uuid4().int % 10**9}"


def alive(marker: str) -> list[str]:
    found = subprocess.run(["pgrep", "-f", f"sleep {marker}"], capture_output=True, text=True)
    return found.stdout.split()


def test_the_host_has_the_cgroups_these_tests_need():
    layout = discover()
    assert layout.killer is not None or layout.pids is not None, layout
    assert layout.pids is not None and layout.memory is not None, layout


@pytest.mark.parametrize("job", ["escape", "escape-bare"])
def test_processes_that_left_the_process_group_do_not_outlive_a_finished_run(contained, job):
    marker = mark()
    run = contained.submit(job, {"mark": marker})
    assert contained.wait_finished(run["id"])["status"] == "succeeded"
    assert alive(marker) == []


def test_a_cancelled_run_leaves_nothing_behind(contained):
    marker = mark()
    run = contained.submit("escape-then-wait", {"mark": marker})
    wait_until(lambda: alive(marker), message="the escaped sleep to start")
    assert contained.post(f"/runs/{run['id']}/cancel").status_code in (200, 202)
    assert contained.wait_finished(run["id"])["status"] == "cancelled"
    assert alive(marker) == []


def test_a_run_cannot_start_more_tasks_than_its_cap_and_says_so(capped):
    marker = mark()
    run = capped.submit("forky", {"mark": marker})
    finished = capped.wait_finished(run["id"], timeout=60)
    assert finished["status"] == "failed"
    assert "cap of 64 tasks (policy.max_processes)" in finished["reason"]
    assert alive(marker) == []


def test_a_run_over_its_memory_cap_is_killed_and_says_so(capped):
    run = capped.submit("greedy", {})
    finished = capped.wait_finished(run["id"], timeout=60)
    assert finished["status"] == "failed" and finished["exit_code"] == 137
    assert "cap of 134217728 bytes of memory (policy.memory_bytes)" in finished["reason"]


def test_exit_codes_are_the_step_s_own(contained):
    run = contained.submit("code", {})
    finished = contained.wait_finished(run["id"])
    assert (finished["status"], finished["exit_code"]) == ("failed", 3)


@pytest.mark.parametrize("profile", ["secure", "permissive", "disabled"])
def test_the_plan_shows_the_containment_and_the_caps(capped, profile):
    plan = capped.post("/plans", {"job": "escape", "profile": profile}).json()["plan"]
    decisions = {d["check"]: (d["outcome"], d["reason"]) for d in plan["decisions"]}
    if profile == "disabled":
        assert not {"containment", "max-processes", "max-memory"} & set(decisions)
        return
    assert decisions["containment"][0] == "allow"
    assert decisions["max-processes"] == (
        "allow",
        "the run may hold at most 64 tasks, threads included (policy.max_processes)",
    )
    assert decisions["max-memory"][0] == "allow" and "policy.memory_bytes" in decisions["max-memory"][1]


def test_a_disabled_run_is_not_capped_but_still_contained(capped):
    marker = mark()
    run = capped.submit("forky", {"mark": marker}, profile="disabled")
    wait_until(lambda: len(alive(marker)) > 64, timeout=30, message="more sleeps than the cap")
    assert capped.post(f"/runs/{run['id']}/cancel").status_code in (200, 202)
    assert capped.wait_finished(run["id"], timeout=60)["status"] == "cancelled"
    assert alive(marker) == []


def escape_server(tmp_path, use_cgroups: bool, **settings):
    """A server of its own, with the job that leaves a process behind and waits."""
    from tests.fixtures.server import ServerProcess

    (tmp_path / "src" / "jobs").mkdir(parents=True)
    (tmp_path / "src" / "jobs" / "escape-then-wait.yaml").write_text(
        job_text("escape-then-wait", JOBS["escape-then-wait"])
    )
    config = {
        "sources": [{"type": "local", "name": "c", "path": str(tmp_path / "src")}],
        "policy": {"cgroups": use_cgroups},
        **settings,
    }
    return ServerProcess(tmp_path, config, dev=True, env={}).start()


@pytest.mark.parametrize("use_cgroups", [True, False])
def test_what_a_killed_server_left_running_is_killed_when_a_server_starts_again(tmp_path, use_cgroups):
    server = escape_server(tmp_path, use_cgroups)
    marker = mark()
    try:
        run = server.submit("escape-then-wait", {"mark": marker})
        wait_until(lambda: len(alive(marker)) == 1, message="the escaped sleep to start")
        server.kill()
        assert len(alive(marker)) == 1  # the server is gone; what the run started is not
        server.start()
        wait_until(lambda: not alive(marker), timeout=30, message="the leftover processes to be killed")
        assert server.wait_finished(run["id"])["status"] == "lost"
    finally:
        for pid in alive(marker):
            os.kill(int(pid), signal.SIGKILL)
        server.stop()
    assert not leftover_groups(discover(), base_name(str(tmp_path / "data" / "flwd.db")))


@pytest.mark.parametrize("use_cgroups", [True, False])
def test_a_server_that_shuts_down_leaves_nothing_behind(tmp_path, use_cgroups):
    server = escape_server(tmp_path, use_cgroups, shutdown_grace=1)
    marker = mark()
    try:
        run = server.submit("escape-then-wait", {"mark": marker})
        wait_until(lambda: len(alive(marker)) == 1, message="the escaped sleep to start")
        assert server.stop() == 0
        assert alive(marker) == []
    finally:
        for pid in alive(marker):
            os.kill(int(pid), signal.SIGKILL)
    server.start()
    try:
        assert server.run_status(run["id"]) == "cancelled"
    finally:
        server.stop()


def test_a_local_cli_run_leaves_nothing_behind(contained):
    marker = mark()
    done = local_flwd(contained.config_path, "escape", "--mark", marker)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "started\n" and alive(marker) == []


def test_without_cgroups_the_plan_says_how_runs_are_contained_and_that_caps_are_not_enforced(adopting):
    plan = adopting.post("/plans", {"job": "escape"}).json()["plan"]
    decisions = {d["check"]: (d["outcome"], d["reason"]) for d in plan["decisions"]}
    assert decisions["containment"][0] == "allow" and "subreaper" in decisions["containment"][1]
    assert decisions["max-processes"][0] == "warn" and "not enforced" in decisions["max-processes"][1]
    assert decisions["max-memory"][0] == "warn" and "not enforced" in decisions["max-memory"][1]
