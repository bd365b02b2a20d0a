"""The reference page's curl commands, run literally through curl and jq (only the port changed)."""

from __future__ import annotations

import json
import subprocess

from tests.fixtures.helpers import require_tool

# Verbatim from the reference page "Serve Mode (HTTP + SSE)".
LIST_JOBS = """curl -s -H 'Authorization: Bearer dev-token' \\
    http://127.0.0.1:8080/jobs | jq"""
PLAN = """curl -s -X POST http://127.0.0.1:8080/plans \\
    -H 'Authorization: Bearer dev-token' \\
    -H 'Content-Type: application/json' \\
    -d '{"job":"hello-world","args":{"name":"Alice"}}' | jq"""
SUBMIT = """curl -s -X POST http://127.0.0.1:8080/runs \\
    -H 'Authorization: Bearer dev-token' \\
    -H 'Content-Type: application/json' \\
    -d '{"job":"hello-world","args":{"name":"Alice"}}' | jq"""
STREAM = """curl -Ns -H 'Authorization: Bearer dev-token' \\
    http://127.0.0.1:8080/runs/RUN_ID/events"""


def shell(command: str, port: int, timeout: float = 30) -> str:
    require_tool("curl")
    require_tool("jq")
    literal = command.replace("127.0.0.1:8080", f"127.0.0.1:{port}")
    done = subprocess.run(
        ["bash", "-c", "set -o pipefail; " + literal], capture_output=True, text=True, timeout=timeout
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_the_reference_page_curl_commands_work_as_written(server):
    jobs = json.loads(shell(LIST_JOBS, server.port))
    assert "hello-world" in [job["name"] for job in jobs["jobs"]]
    hello = next(job for job in jobs["jobs"] if job["name"] == "hello-world")
    assert hello["args"]["name"]["type"] == "string" and hello["args"]["name"]["required"] is True

    plan = json.loads(shell(PLAN, server.port))["plan"]
    assert plan["job"] == "hello-world" and plan["source"] == "examples"
    assert plan["args"] == {"name": "Alice", "times": 1}  # the default filled in
    assert plan["runnable"] is True and plan["digest"].startswith("sha256:")
    assert plan["steps"][0]["name"] == "greet"

    run = json.loads(shell(SUBMIT, server.port))["run"]
    assert run["status"] in ("queued", "running", "succeeded")
    assert run["links"]["events"] == f"/runs/{run['id']}/events"

    # The stream ends by itself after the run's terminal event: no timeout needed by curl.
    stream = shell(STREAM.replace("RUN_ID", run["id"]), server.port, timeout=30)
    assert "Hello, Alice" in stream
    last = [line for line in stream.splitlines() if line.startswith("event: ")][-1]
    assert last == "event: run.finished"
    assert '"status":"succeeded"' in stream.split("event: run.finished", 1)[1]
