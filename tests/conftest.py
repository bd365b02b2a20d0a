"""Shared fixtures: settings and an engine for unit tests, a real ``flwd :serve`` for integration tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from flwd_server.config import Settings, load_settings
from tests.helpers import free_port, read_stream, wait_until

REPO = Path(__file__).resolve().parent.parent
DEV_HEADERS = {"Authorization": "Bearer dev-token"}

pytest_plugins = [
    "tests.fixtures.containers",
    "tests.fixtures.git",
    "tests.fixtures.nginx",
    "tests.fixtures.postgres",
    "tests.fixtures.tokens",
]


@pytest.fixture(autouse=True)
def _isolated_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No test reads the developer's own flwd config, data dir or token."""
    for name in list(os.environ):
        if name.startswith("FLWD_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("FLWD_DATA_DIR", str(tmp_path / "flwd-data"))


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    path = tmp_path / "data"
    path.mkdir()
    return path


@pytest.fixture
def make_settings(data_dir: Path) -> Callable[..., Settings]:
    def make(**overrides: Any) -> Settings:
        flat = {"data_dir": str(data_dir), **overrides}
        return load_settings(None, flat, environ={})

    return make


@pytest.fixture
def engine(make_settings: Callable[..., Settings]) -> Iterator[Any]:
    from flwd_server.engine import Engine

    eng = Engine(make_settings(**{"sse.poll_interval": 0.01}))
    yield eng
    eng.close(grace=0)


class ServerProcess:
    """A real ``flwd :serve`` (gunicorn, gthread) on a free loopback port."""

    def __init__(self, root: Path, config: dict[str, Any], dev: bool, env: dict[str, str] | None, host: str = "127.0.0.1") -> None:
        self.root = root
        self.host = host
        self.port = free_port(host)
        self.data_dir = root / "data"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.config = {"data_dir": str(self.data_dir), "workers": 1, "threads": 16, **config}
        self.config.setdefault("bind", f"[{host}]:{self.port}" if ":" in host else f"{host}:{self.port}")
        self.dev = dev
        self.env = env or {}
        self.config_path = root / "server.yaml"
        self.log_path = root / "server.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self._log = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def start(self, wait: bool = True) -> ServerProcess:
        self.config_path.write_text(yaml.safe_dump(self.config))
        args = [sys.executable, "-m", "flwd_cli", ":serve", "--config", str(self.config_path)]
        if self.dev:
            args.append("--dev")
        env = {k: v for k, v in os.environ.items() if not k.startswith("FLWD_")}
        env.update({"PYTHONUNBUFFERED": "1", **self.env})
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(args, stdout=self._log, stderr=subprocess.STDOUT, env=env, cwd=self.root, start_new_session=True)
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self, timeout: float = 30.0) -> None:
        def ready() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"flwd :serve exited with {self.proc.returncode}:\n{self.logs()}")
            try:
                return requests.get(self.url + "/healthz", timeout=1).status_code == 200
            except requests.RequestException:
                return False

        wait_until(ready, timeout, 0.05, f"flwd :serve on {self.url} to answer /healthz")

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def worker_pids(self) -> list[int]:
        assert self.proc is not None
        out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(self.proc.pid)], capture_output=True, text=True).stdout
        return [int(p) for p in out.split()]

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60.0) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        code = self.proc.returncode
        self.proc = None
        if self._log:
            self._log.close()
        return code

    def kill(self) -> None:
        """SIGKILL the whole server (master and workers), as a crash would."""
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)
        self.proc = None
        if self._log:
            self._log.close()

    # -- HTTP helpers --------------------------------------------------------

    def headers(self, token: str = "dev-token") -> dict[str, str]:
        return {"Authorization": f"Bearer {token}"}

    def get(self, path: str, token: str = "dev-token", **kwargs: Any) -> requests.Response:
        return requests.get(self.url + path, headers={**self.headers(token), **kwargs.pop("headers", {})}, timeout=kwargs.pop("timeout", 10), **kwargs)

    def post(self, path: str, body: Any = None, token: str = "dev-token", **kwargs: Any) -> requests.Response:
        headers = {**self.headers(token), **kwargs.pop("headers", {})}
        return requests.post(self.url + path, json=body, headers=headers, timeout=kwargs.pop("timeout", 10), **kwargs)

    def delete(self, path: str, token: str = "dev-token", **kwargs: Any) -> requests.Response:
        return requests.delete(self.url + path, headers={**self.headers(token), **kwargs.pop("headers", {})}, timeout=kwargs.pop("timeout", 10), **kwargs)

    def submit(self, job: str, args: dict[str, Any] | None = None, **body: Any) -> dict[str, Any]:
        response = self.post("/runs", {"job": job, "args": args or {}, **body})
        assert response.status_code == 202, response.text
        return response.json()["run"]

    def run_status(self, run_id: str) -> str:
        return self.get(f"/runs/{run_id}").json()["run"]["status"]

    def wait_finished(self, run_id: str, timeout: float = 30.0) -> dict[str, Any]:
        def finished() -> dict[str, Any] | None:
            run = self.get(f"/runs/{run_id}").json()["run"]
            return run if run["status"] not in ("queued", "running") else None

        return wait_until(finished, timeout, 0.05, f"run {run_id} to finish")

    def events(self, run_id: str, timeout: float = 30.0, **headers: str) -> list[dict[str, Any]]:
        """The whole event stream of a run, read until the server ends it."""
        return read_stream(f"{self.url}/runs/{run_id}/events", {**self.headers(), **headers}, timeout=timeout)


@pytest.fixture
def start_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., ServerProcess]]:
    started: list[ServerProcess] = []

    def start(config: dict[str, Any] | None = None, *, dev: bool = True, env: dict[str, str] | None = None, wait: bool = True, host: str = "127.0.0.1", root: Path | None = None) -> ServerProcess:
        server = ServerProcess(root or tmp_path_factory.mktemp("server"), config or {}, dev, env, host)
        started.append(server)
        return server.start(wait=wait)

    yield start
    for server in started:
        if server.proc is not None:
            server.stop(timeout=30)


@pytest.fixture
def server(start_server: Callable[..., ServerProcess]) -> ServerProcess:
    """A dev server on the bundled jobs, one worker."""
    return start_server({"sse": {"heartbeat": 1.0}})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "integration" in item.path.parts:
            item.add_marker(pytest.mark.integration)
