"""The flwd command: local runs and the same commands against a server, and the README's commands."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest
import requests

from tests.fixtures.helpers import cli, free_port, wait_until
from tests.fixtures.server import REPO

pytestmark = pytest.mark.integration


def flwd(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return cli(*args, env=env, timeout=timeout)


@pytest.fixture
def local_env(tmp_path):
    return {"FLWD_DATA_DIR": str(tmp_path / "cli-data")}


def test_a_local_run_streams_output_and_exits_with_the_jobs_code(local_env):
    done = flwd("hello-world", "--name", "Alice", "--times", "2", env=local_env)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "Hello, Alice\nHello, Alice\n"
    assert "succeeded" in done.stderr
    failed = flwd("fail", "--code", "5", env=local_env)
    assert failed.returncode == 5 and failed.stdout == "about to fail with 5\n"
    both = flwd("stderr", "--lines", "1", env=local_env)
    assert (both.stdout, both.stderr.splitlines()[0]) == ("out 1\n", "err 1")


def test_invalid_arguments_are_named(local_env):
    done = flwd("hello-world", "--name", "R2-D2", env=local_env)
    assert done.returncode == 2 and "args.name" in done.stderr and "pattern" in done.stderr
    missing = flwd("no-such-job", env=local_env)
    assert missing.returncode == 2 and "no-such-job" in missing.stderr
    help_text = flwd("hello-world", "--help", env=local_env)
    assert help_text.returncode == 0 and "--name" in help_text.stdout and "Who to greet" in help_text.stdout


def test_local_history_plan_and_events(local_env):
    flwd("hello-world", "--name", "Bob", env=local_env)
    runs = json.loads(flwd(":runs", "--json", env=local_env).stdout)["runs"]
    assert runs[0]["job"] == "hello-world" and runs[0]["submitted_by"].startswith("local:")
    events = [json.loads(line) for line in flwd(":events", runs[0]["id"], "--json", env=local_env).stdout.splitlines()]
    assert events[-1]["type"] == "run.finished"
    plan = json.loads(flwd(":plan", "hello-world", "--arg", "name=Bob", "--json", env=local_env).stdout)["plan"]
    assert plan["args"] == {"name": "Bob", "times": 1} and plan["runnable"]


def test_ctrl_c_cancels_a_local_run(local_env):
    environ = {**{k: v for k, v in os.environ.items() if not k.startswith("FLWD_")}, **local_env}
    proc = subprocess.Popen(
        [sys.executable, "-m", "flwd_cli", "slow", "--seconds", "300"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=environ,
        cwd=REPO,
    )
    assert proc.stdout.readline() == "tick 1\n"
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=20)
    assert proc.returncode == 130 and "cancelled" in err


def test_the_same_commands_work_against_a_server(server):
    remote = {"FLWD_SERVER": server.url, "FLWD_TOKEN": "dev-token"}
    jobs = json.loads(flwd(":jobs", "--json", env=remote).stdout)["jobs"]
    assert "hello-world" in [j["name"] for j in jobs]
    done = flwd("hello-world", "--name", "Remote", env=remote)
    assert done.returncode == 0 and done.stdout == "Hello, Remote\n"
    runs = json.loads(flwd(":runs", "--json", env=remote).stdout)["runs"]
    assert runs[0]["submitted_by"] == "dev"
    failed = flwd("fail", env=remote)
    assert failed.returncode == 3
    slow = flwd("slow", "--seconds", "300", "--detach", env=remote)
    run_id = slow.stdout.strip()
    assert flwd(":cancel", run_id, env=remote).returncode == 0
    assert server.wait_finished(run_id)["status"] == "cancelled"
    bad = flwd(":jobs", env={"FLWD_SERVER": server.url, "FLWD_TOKEN": "wrong"})
    assert bad.returncode == 2 and "token" in bad.stderr.lower()


def test_the_readme_server_command_starts_a_dev_server(tmp_path):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLWD_")}
    env["FLWD_DATA_DIR"] = str(tmp_path / "dev-data")
    log = open(tmp_path / "dev.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        ["bash", "scripts/dev-server", "--bind", f"127.0.0.1:{port}"],
        cwd=REPO,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:

        def up():
            try:
                return (
                    requests.get(
                        f"http://127.0.0.1:{port}/jobs", headers={"Authorization": "Bearer dev-token"}, timeout=1
                    ).status_code
                    == 200
                )
            except requests.RequestException:
                return False

        wait_until(up, 60, 0.1, "scripts/dev-server to serve /jobs with dev-token")
        assert (tmp_path / "dev-data" / "flwd.db").exists()
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)
        log.close()
