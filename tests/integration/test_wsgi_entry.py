"""``flwd_server.wsgi:app``, the entry point WSGI hosts load, served by a plain gunicorn (not ``flwd :serve``)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import requests
import yaml

from tests.fixtures.helpers import free_port, read_stream, wait_until


def test_a_plain_gunicorn_serves_flwd_server_wsgi_app(tmp_path):
    port = free_port()
    config = tmp_path / "server.yaml"
    config.write_text(yaml.safe_dump({"dev": True, "data_dir": str(tmp_path / "data")}))
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLWD_")}
    env["FLWD_CONFIG"] = str(config)
    log = open(tmp_path / "gunicorn.log", "wb")  # noqa: SIM115 - closed below
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gunicorn",
            "--bind",
            f"127.0.0.1:{port}",
            "-k",
            "gthread",
            "--threads",
            "8",
            "flwd_server.wsgi:app",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
        cwd=tmp_path,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    headers = {"Authorization": "Bearer dev-token"}
    try:

        def up() -> bool:
            assert server.poll() is None, (tmp_path / "gunicorn.log").read_text()
            try:
                return requests.get(url + "/healthz", timeout=1).status_code == 200
            except requests.RequestException:
                return False

        wait_until(up, 30, 0.05, "gunicorn with flwd_server.wsgi:app to answer /healthz")
        jobs = requests.get(url + "/jobs", headers=headers, timeout=10).json()["jobs"]
        assert "hello-world" in [job["name"] for job in jobs]
        run = requests.post(
            url + "/runs", json={"job": "hello-world", "args": {"name": "Wsgi"}}, headers=headers, timeout=10
        )
        assert run.status_code == 202, run.text
        events = read_stream(f"{url}/runs/{run.json()['run']['id']}/events", headers, timeout=30)
        lines = [e["data"]["data"].get("line") for e in events if e["event"] == "step.output"]
        assert lines == ["Hello, Wsgi"]
        assert events[-1]["event"] == "run.finished" and events[-1]["data"]["data"]["status"] == "succeeded"
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(10)
        log.close()
