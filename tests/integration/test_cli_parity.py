"""The CLI is one tool: each command gives the same output and exit code locally and with --server,
options go before or after the command, a detached local run completes, and a job's help is whole."""

from __future__ import annotations

import errno
import json
import os
import pty
import re
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.fixtures.helpers import cli, local_flwd, processes_of_run, processes_with_env, wait_until
from tests.fixtures.server import REPO, ServerProcess

pytestmark = pytest.mark.integration

JOBS = {
    # Denied under the secure profile: a rejection, locally and remotely.
    "needs-host-env.yaml": "name: needs-host-env\nrequires: [host-env]\nsteps:\n  - run: 'echo never'\n",
    # An argument named like a run option.
    "clash.yaml": (
        "name: clash\nargs:\n  token: {type: string, required: true, description: A job's own token}\n"
        "steps:\n  - run: 'echo \"token is $FLWD_ARG_TOKEN\"'\n"
    ),
}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("parity")
    (root / "src" / "jobs").mkdir(parents=True)
    for name, text in JOBS.items():
        (root / "src" / "jobs" / name).write_text(text)
    config = {
        "sources": [{"type": "local", "name": "extra", "path": str(root / "src")}],
        "container": {"runtime": "none"},
    }
    server = ServerProcess(root, config, dev=True, env=None).start()
    yield server
    server.stop()


def remote(server: ServerProcess, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return cli(*args, env={"FLWD_SERVER": server.url, "FLWD_TOKEN": "dev-token"}, timeout=timeout)


def local(server: ServerProcess, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return local_flwd(server.config_path, *args, timeout=timeout)


RUN_ID = re.compile(r"\b[0-9a-hjkmnp-tv-z]{26}\b")


def normal(text: str) -> str:
    """Output with what differs from run to run (run ids, durations) replaced."""
    return re.sub(r"\b\d+\.\d+s\b", "N.NNs", RUN_ID.sub("RUN", text))


def both(server: ServerProcess, *args: str) -> tuple[tuple[int, str, str], tuple[int, str, str]]:
    here, there = local(server, *args), remote(server, *args)
    return (
        (here.returncode, normal(here.stdout), normal(here.stderr)),
        (there.returncode, normal(there.stdout), normal(there.stderr)),
    )


@pytest.mark.parametrize(
    "args",
    [
        (":jobs",),
        (":plan", "hello-world", "--arg", "name=Al"),
        ("hello-world", "--name", "Al", "--times", "2"),
        ("fail", "--code", "4"),
        ("needs-host-env",),
        ("hello-world", "--name", "R2-D2"),
        ("no-such-job",),
        ("hello-world", "--help"),
        ("clash", "--arg", "token=abc"),
        (":cancel", "no-such-run"),
    ],
    ids=lambda args: " ".join(args),
)
def test_each_command_gives_the_same_output_and_exit_code_locally_and_remotely(server, args):
    here, there = both(server, *args)
    assert here == there


def test_a_policy_rejection_shows_the_denied_checks_both_ways(server):
    for done in (local(server, "needs-host-env"), remote(server, "needs-host-env")):
        assert done.returncode == 77
        assert "policy deny: host-env" in done.stderr and "rejected" in done.stderr


def test_cancel_waits_for_the_end_and_says_so_both_ways(server):
    outputs = []
    for flwd in (local, remote):
        started = flwd(server, "slow", "--seconds", "300", "--detach")
        assert started.returncode == 0, started.stderr
        run_id = started.stdout.strip()
        wait_until(lambda run_id=run_id: server.run_status(run_id) == "running", 30, 0.05, f"{run_id} to run")
        done = flwd(server, ":cancel", run_id)
        outputs.append((done.returncode, done.stdout.replace(run_id, "RUN"), done.stderr))
        assert server.run_status(run_id) == "cancelled"
    assert outputs[0] == outputs[1] == (0, "RUN: cancelled\n", "")


def flwd_processes(config_path: Path) -> list[int]:
    """Live processes started with this config file in their environment (a CLI and what it left behind)."""
    return processes_with_env(f"FLWD_CONFIG={config_path}")


def test_a_detached_local_run_completes_without_a_server(tmp_path):
    config = tmp_path / "flwd.yaml"
    config.write_text(json.dumps({"data_dir": str(tmp_path / "data")}))
    done = local_flwd(config, "slow", "--seconds", "2", "--detach")
    assert done.returncode == 0, done.stderr
    run_id = done.stdout.strip()
    assert RUN_ID.fullmatch(run_id)
    runs = json.loads(local_flwd(config, ":runs", "--json").stdout)["runs"]
    assert runs[0]["id"] == run_id and runs[0]["status"] in ("queued", "running")  # the CLI returned at once

    def finished():
        run = json.loads(local_flwd(config, ":runs", "--json").stdout)["runs"][0]
        return run if run["status"] not in ("queued", "running") else None

    assert wait_until(finished, 60, 0.2, f"detached run {run_id} to finish")["status"] == "succeeded"
    events = [json.loads(line) for line in local_flwd(config, ":events", run_id, "--json").stdout.splitlines()]
    assert [e["data"]["line"] for e in events if e["type"] == "step.output"] == ["tick 1", "tick 2"]
    assert processes_of_run(run_id) == []
    wait_until(lambda: flwd_processes(config) == [], 15, 0.05, "the background runner to exit")


def test_server_and_token_go_before_or_after_the_command(server):
    url = server.url
    before = cli("--server", url, "--token", "dev-token", ":jobs", "--json")
    assert before.returncode == 0, before.stderr
    assert "hello-world" in [j["name"] for j in json.loads(before.stdout)["jobs"]]
    run = cli("--token", "dev-token", "--server", url, "hello-world", "--arg", "name=Before")
    assert (run.returncode, run.stdout) == (0, "Hello, Before\n"), run.stderr
    mixed = cli("--server", url, "hello-world", "--name", "Mixed", env={"FLWD_TOKEN": "dev-token"})
    assert (mixed.returncode, mixed.stdout) == (0, "Hello, Mixed\n"), mixed.stderr
    runs = json.loads(cli("--server", url, ":runs", "--json", "--token", "dev-token").stdout)["runs"]
    assert runs[0]["submitted_by"] == "dev"  # it ran on the server, not locally
    config = cli("--config", str(server.config_path), ":jobs", "--json")
    assert config.returncode == 0 and "clash" in [j["name"] for j in json.loads(config.stdout)["jobs"]]


def test_a_jobs_help_lists_the_run_options_and_h_works(server):
    long, short = local(server, "hello-world", "--help"), local(server, "hello-world", "-h")
    assert long.returncode == short.returncode == 0, long.stderr + short.stderr
    assert long.stdout == short.stdout
    for flag in ("--name", "--times", "--detach", "--server", "--token", "--arg", "--source", "--profile", "--quiet"):
        assert flag in long.stdout, flag
    assert "Who to greet" in long.stdout


def test_a_job_argument_named_like_a_run_option_is_reachable_and_the_clash_is_said(server):
    help_text = local(server, "clash", "--help").stdout
    assert "--arg token=" in help_text and "A job's own token" in help_text
    ran = local(server, "clash", "--arg", "token=abc")
    assert (ran.returncode, ran.stdout) == (0, "token is abc\n"), ran.stderr
    swallowed = local(server, "clash", "--token", "abc")
    assert swallowed.returncode == 2
    assert "--arg token=" in swallowed.stderr  # says how to pass the job's own argument


def read_pty(args: list[str], env: dict[str, str]) -> bytes:
    """Run the CLI with stdout and stderr on a terminal; return what it wrote there."""
    controller, terminal = pty.openpty()
    environ = {k: v for k, v in os.environ.items() if not k.startswith("FLWD_") and k != "NO_COLOR"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "flwd_cli", *args],
        stdin=subprocess.DEVNULL,
        stdout=terminal,
        stderr=terminal,
        env={**environ, **env},
        cwd=REPO,
    )
    os.close(terminal)
    out = b""
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([controller], [], [], 1)
            if not ready:
                continue
            try:
                chunk = os.read(controller, 65536)
            except OSError as exc:  # EIO: the terminal's last writer is gone
                if exc.errno != errno.EIO:
                    raise
                break
            if not chunk:
                break
            out += chunk
        assert proc.wait(30) == 3, out
    finally:
        os.close(controller)
    return out


def test_no_color_is_obeyed_on_a_terminal(tmp_path):
    env = {"FLWD_DATA_DIR": str(tmp_path / "data")}
    coloured = read_pty(["fail"], env)
    assert b"about to fail with 3" in coloured and b"\x1b[" in coloured  # a terminal gets colour by default
    plain = read_pty(["fail"], {**env, "NO_COLOR": "1"})
    assert b"about to fail with 3" in plain and b"flwd: run" in plain and b"\x1b[" not in plain
    empty = read_pty(["fail"], {**env, "NO_COLOR": ""})  # set but empty: no effect (no-color.org)
    assert b"\x1b[" in empty


def test_export_writes_to_stdout_by_default(server):
    local(server, "noop")
    done = local(server, ":export", "--job", "examples:noop")
    assert done.returncode == 0, done.stderr
    records = [json.loads(line) for line in done.stdout.splitlines()]
    assert records[-1]["record"] == "end" and records[-1]["runs"] >= 1
    assert "to stdout" in done.stderr


def test_a_wrong_token_on_a_dev_server_is_told_what_is_wrong(server):
    import requests

    for token, says in (
        ("wrong", "not a well-formed JWT"),
        ("eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln", "verifies no signed tokens"),
    ):
        response = requests.get(server.url + "/jobs", headers={"Authorization": f"Bearer {token}"}, timeout=10)
        assert response.status_code == 401
        assert response.headers["Content-Type"] == "application/problem+json"
        detail = response.json()["detail"]
        challenge = response.headers["WWW-Authenticate"]
        assert challenge.startswith("Bearer ") and 'error="invalid_token"' in challenge and says in challenge
        assert says in detail and "only --dev accepts" not in detail, detail
    done = cli("--server", server.url, "--token", "wrong", ":jobs")
    assert done.returncode == 2 and "not a well-formed JWT" in done.stderr


def test_a_running_server_has_logged_no_shutdown(server):
    """The start-up preparation's engine closes before the fork: that is no shutdown, and must not say one."""
    server.wait_ready()
    logs = server.logs()
    assert "flwd serving on" in logs
    assert '"server.shutdown"' not in logs and "shutting down" not in logs


def test_a_port_already_taken_is_a_clear_error_and_no_serving_line(tmp_path):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        address = f"127.0.0.1:{taken.getsockname()[1]}"
        done = cli(":serve", "--dev", "--bind", address, env={"FLWD_DATA_DIR": str(tmp_path / "data")})
    said = done.stdout + done.stderr
    assert done.returncode != 0
    assert "serving on" not in said
    assert f"cannot listen on {address}" in said and "in use" in said, said


@pytest.fixture(scope="module")
def exported(server, tmp_path_factory):
    """A local export of two runs (with output) and, signed with a key `flwd :keys` made, its signed twin."""
    root = tmp_path_factory.mktemp("audit")
    for _ in range(2):
        assert local(server, "noop").returncode == 0
    made = cli(":keys", "new", "--dir", str(root / "keys"), "--alg", "EdDSA", "--jwks", str(root / "jwks.json"))
    assert made.returncode == 0, made.stderr
    kid = re.search(r"kid:\s+(\S+)", made.stdout).group(1)
    other = cli(":keys", "new", "--dir", str(root / "other"), "--alg", "ES256", "--jwks", str(root / "other.json"))
    assert other.returncode == 0, other.stderr
    plain, signed = root / "plain.ndjson", root / "signed.ndjson"
    assert local(server, ":export", "-o", str(plain)).returncode == 0
    done = local(server, ":export", "-o", str(signed), "--sign", str(root / "keys" / f"{kid}.pem"))
    assert done.returncode == 0, done.stderr
    return root, plain, signed


@pytest.mark.parametrize("how", ["edit", "delete", "insert", "reorder"])
def test_export_verify_names_the_first_line_tampered_with(exported, how):
    root, plain, _ = exported
    intact = cli(":export", "--verify", str(plain))
    assert intact.returncode == 0 and "the chains hold" in intact.stderr, intact.stderr
    lines = plain.read_text().splitlines(keepends=True)
    at = next(i for i, line in enumerate(lines) if '"record":"run"' in line) + 2  # the run's second event
    assert '"record":"event"' in lines[at] and '"record":"event"' in lines[at + 1]
    if how == "edit":
        lines[at] = lines[at].replace('"data":{', '"data":{"forged":1,', 1)
    elif how == "delete":
        del lines[at]
    elif how == "insert":
        lines.insert(at, lines[at + 1])
    else:
        lines[at], lines[at + 1] = lines[at + 1], lines[at]
    copy = root / f"{how}.ndjson"
    copy.write_text("".join(lines))
    checked = cli(":export", "--verify", str(copy))
    assert checked.returncode == 1 and f"line {at + 1}:" in checked.stderr, checked.stderr


def test_a_signed_export_holds_with_its_jwks_and_is_refused_with_another(exported):
    root, plain, signed = exported
    held = cli(":export", "--verify", str(signed), "--jwks", str(root / "jwks.json"))
    assert held.returncode == 0 and "the signature holds" in held.stderr, held.stderr
    refused = cli(":export", "--verify", str(signed), "--jwks", str(root / "other.json"))
    assert refused.returncode == 1 and "does not hold" in refused.stderr, refused.stderr
    unsigned = cli(":export", "--verify", str(plain), "--jwks", str(root / "jwks.json"))
    assert unsigned.returncode == 1 and "not signed" in unsigned.stderr, unsigned.stderr
    # The signature is over the bytes: a run record (which no chain covers) edited breaks it.
    text = signed.read_text().replace('"status":"succeeded"', '"status":"failed"', 1)
    (root / "edited.ndjson").write_text(text)
    edited = cli(":export", "--verify", str(root / "edited.ndjson"), "--jwks", str(root / "jwks.json"))
    assert edited.returncode == 1 and "does not hold" in edited.stderr, edited.stderr
