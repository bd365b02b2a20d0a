"""A secret argument's value never reaches stored output: events, streams, the export, logs, the CLI."""

from __future__ import annotations

import json

import pytest

from tests.fixtures.helpers import local_flwd

pytestmark = pytest.mark.integration

TOKEN = "hunter2-s3cret-value"
KEY = "-----BEGIN TEST KEY-----\nMIIEpAIBAAKCAQEA1x\nQ2xkZmFzZGZhc2Rm\n-----END TEST KEY-----"
LEAKY = """\
name: leaky
args:
  password: {type: string, required: true, secret: true}
  key: {type: string, default: "", secret: true}
  plain: {type: string, default: visible}
steps:
  - name: print
    run: |
      echo "token=$FLWD_ARG_PASSWORD plain=$FLWD_ARG_PLAIN"
      echo "to stderr: $FLWD_ARG_PASSWORD" >&2
      printf 'split: %s' "${FLWD_ARG_PASSWORD%%-*}"; printf '%s\\n' "-${FLWD_ARG_PASSWORD#*-}"
      printf '%s\\n' "$FLWD_ARG_KEY"
      printf '%0236d%s and more\\n' 0 "$FLWD_ARG_PASSWORD"
      printf '%0251d%s\\n' 0 "$FLWD_ARG_PASSWORD"
  - name: again
    run: 'echo "second step: $FLWD_ARG_PASSWORD"'
"""


@pytest.fixture(scope="module")
def secret_server(tmp_path_factory):
    from tests.fixtures.server import ServerProcess

    root = tmp_path_factory.mktemp("secrets")
    (root / "src" / "jobs").mkdir(parents=True)
    (root / "src" / "jobs" / "leaky.yaml").write_text(LEAKY)
    config = {
        "sources": [{"type": "local", "name": "s", "path": str(root / "src")}],
        "limits": {"max_line_bytes": 256},
    }
    server = ServerProcess(root, config, dev=True, env={}).start()
    yield server
    server.stop()


def output_lines(server, run_id):
    return [
        (e["data"]["data"]["stream"], e["data"]["data"]["line"])
        for e in server.events(run_id)
        if e["event"] == "step.output"
    ]


def assert_nowhere(text: str, secrets: tuple[str, ...] = (TOKEN, *KEY.splitlines()[1:3])) -> None:
    for secret in secrets:
        assert secret not in text
    assert "s3cret" not in text  # no piece of the token either, even where a line was cut inside it


def test_secret_values_are_masked_in_every_line_a_step_prints(secret_server):
    run = secret_server.submit("leaky", {"password": TOKEN, "key": KEY})
    assert secret_server.wait_finished(run["id"])["status"] == "succeeded"
    lines = output_lines(secret_server, run["id"])
    assert ("stdout", "token=*** plain=visible") in lines
    assert ("stderr", "to stderr: ***") in lines
    assert ("stdout", "split: ***") in lines
    stdout = [line for stream, line in lines if stream == "stdout"]
    key_at = stdout.index("split: ***") + 1
    assert stdout[key_at : key_at + 4] == ["***"] * 4  # every line of a secret of several lines
    assert ("stdout", "0" * 236 + "***" + " [flwd: line truncated]") in lines
    assert ("stdout", "0" * 251 + "***" + " [flwd: line truncated]") in lines  # "hunte" before the cut
    assert ("stdout", "second step: ***") in lines
    raw = secret_server.get(f"/runs/{run['id']}/events").text
    assert "plain=visible" in raw
    assert_nowhere(raw)
    assert_nowhere(json.dumps(secret_server.get(f"/runs/{run['id']}").json()))
    export = secret_server.get("/export")
    assert export.status_code == 200 and run["id"] in export.text
    assert_nowhere(export.text)
    assert_nowhere(secret_server.logs())


def test_a_value_too_short_to_mask_is_a_warning_of_the_run(secret_server):
    run = secret_server.submit("leaky", {"password": "abc"})
    assert secret_server.wait_finished(run["id"])["status"] == "succeeded"
    decisions = [e["data"]["data"] for e in secret_server.events(run["id"]) if e["event"] == "policy.decision"]
    warning = next(d for d in decisions if d["check"] == "secret-output")
    assert warning["outcome"] == "warn" and "password" in warning["reason"] and "abc" not in warning["reason"]


def test_a_local_cli_run_prints_the_masked_output(secret_server):
    done = local_flwd(secret_server.config_path, "leaky", "--password", TOKEN)
    assert done.returncode == 0, done.stderr
    assert "token=*** plain=visible" in done.stdout and "to stderr: ***" in done.stderr
    assert_nowhere(done.stdout + done.stderr)
