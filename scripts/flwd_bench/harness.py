"""The bench's temp dir, the servers it starts, and how everything is undone.

Every process is started in its own session and registered with the
:class:`Workspace`; :meth:`Workspace.close` stops them all (SIGTERM, then
SIGKILL), kills whatever still runs with its working directory inside the temp
dir (job processes a server left behind), and removes the dir. ``close`` runs
on success, on failure and on Ctrl-C (see ``cli.main``).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from . import procs
from .client import Api

T = TypeVar("T")
LOOPBACK = "127.0.0.1"


def wait_for(predicate: Callable[[], T], timeout: float, what: str, interval: float = 0.05) -> T:
    """Poll ``predicate`` until it returns something truthy; raise after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return sock.getsockname()[1]


def port_open(port: int) -> bool:
    try:
        with socket.create_connection((LOOPBACK, port), timeout=0.5):
            return True
    except OSError:
        return False


class Workspace:
    """A temp dir plus every process started in it."""

    def __init__(self, keep: bool = False) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="flwd-bench-"))
        self.keep = keep
        self._procs: list[subprocess.Popen[bytes]] = []
        self._files: list[Any] = []

    def path(self, *parts: str) -> Path:
        return self.root.joinpath(*parts)

    def unique(self, name: str) -> str:
        """``name``, or ``name-2``, ``name-3``... if the temp dir already holds it."""
        candidate, n = name, 1
        while self.path(candidate).exists():
            n += 1
            candidate = f"{name}-{n}"
        return candidate

    def spawn(
        self, args: list[str], *, log: str, env: dict[str, str] | None = None, stdout: int | None = None
    ) -> subprocess.Popen[bytes]:
        """Start a process in its own session (Ctrl-C reaches only the bench, which then stops it)."""
        log_file = open(self.path(log), "ab")  # noqa: SIM115 - closed in close()
        self._files.append(log_file)
        proc = subprocess.Popen(
            args,
            stdout=log_file if stdout is None else stdout,
            stderr=log_file,
            stdin=subprocess.DEVNULL,
            env=env,
            cwd=self.root,
            start_new_session=True,
        )
        self._procs.append(proc)
        return proc

    def wait(self, proc: subprocess.Popen[bytes], timeout: float) -> bool:
        """Wait up to ``timeout`` for ``proc`` to exit *without reaping it* (see ``stop``)."""
        deadline = time.monotonic() + timeout
        while not exited(proc):
            if time.monotonic() > deadline:
                return False
            time.sleep(0.02)
        return True

    def stop(self, proc: subprocess.Popen[bytes], timeout: float = 15.0) -> None:
        """SIGTERM the process's group, SIGKILL what is left of it, then reap the leader.

        Until the leader is reaped its pid, hence the group id, cannot be reused, so the
        signals reach only this group.  A leader reaped earlier is left alone.
        """
        if proc.returncode is not None:
            return
        _signal_group(proc.pid, signal.SIGTERM)
        self.wait(proc, timeout)
        _signal_group(proc.pid, signal.SIGKILL)
        proc.wait(10)

    def close(self) -> None:
        # A second Ctrl-C must not cut the cleanup short and leave servers running.
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            for proc in reversed(self._procs):
                try:
                    self.stop(proc)
                except Exception:  # keep cleaning up the others
                    pass
            for pid in procs.processes_under(self.root):
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
            for f in self._files:
                f.close()
            if not self.keep:
                shutil.rmtree(self.root, ignore_errors=True)
        finally:
            signal.signal(signal.SIGINT, previous)


def exited(proc: subprocess.Popen[bytes]) -> bool:
    """True once ``proc`` has exited; it is not reaped, so its pid stays ours until ``stop``."""
    if proc.returncode is not None:
        return True
    try:
        return os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:
        return True


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except OSError:
        pass


class FlwdServer:
    """A fresh ``flwd :serve --dev`` on a free loopback port, with its own data dir and config."""

    def __init__(self, ws: Workspace, name: str, python: str, config: dict[str, Any]) -> None:
        self.ws = ws
        self.name = name
        self.python = python
        self.port = free_port()
        self.name = ws.unique(name)
        self.dir = ws.path(self.name)
        self.dir.mkdir()
        self.config = {
            "bind": f"{LOOPBACK}:{self.port}",
            "data_dir": str(self.dir / "data"),
            "shutdown_grace": 1.0,  # the bench never needs runs to outlive it
            **config,
        }
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def api(self) -> Api:
        return Api(LOOPBACK, self.port)

    def start(self, timeout: float = 60.0) -> FlwdServer:
        config_path = self.dir / "server.yaml"
        config_path.write_text(json.dumps(self.config, indent=2))  # JSON is YAML
        env = {k: v for k, v in os.environ.items() if not k.startswith("FLWD_")}
        env["PYTHONUNBUFFERED"] = "1"
        args = [self.python, "-m", "flwd_cli", ":serve", "--config", str(config_path), "--dev"]
        self.proc = self.ws.spawn(args, log=f"{self.name}.log", env=env)
        api = self.api()

        def ready() -> bool:
            if self.proc is not None and exited(self.proc):
                raise RuntimeError(f"flwd :serve exited; log:\n{self.log_tail()}")
            if len(self.worker_pids()) < self.config.get("workers", 2):
                return False
            try:
                return api.get("/healthz")[0] == 200
            except OSError:
                return False

        try:
            wait_for(ready, timeout, f"flwd on {self.url} to answer /healthz")
        except BaseException:
            self.stop()  # not left running beside the next figure's servers
            raise
        finally:
            api.close()
        return self

    def settle(self, minimum: float, timeout: float = 20.0) -> procs.Memory:
        """Wait at least ``minimum`` seconds, then until the servers' RSS stops moving
        (less than 0.5 MB in a second; workers may still be loading the app); its memory then."""
        time.sleep(minimum)
        deadline = time.monotonic() + timeout
        last = procs.total_memory(self.server_pids())
        while time.monotonic() < deadline:
            time.sleep(1.0)
            now = procs.total_memory(self.server_pids())
            if abs(now.rss - last.rss) < 512 * 1024:
                return now
            last = now
        return last

    def log_tail(self, lines: int = 30) -> str:
        path = self.ws.path(f"{self.name}.log")
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""

    def worker_pids(self) -> list[int]:
        return procs.children(self.proc.pid) if self.proc else []

    def server_pids(self) -> list[int]:
        """The master and its workers; job processes (the workers' children) are not the server."""
        return [self.proc.pid, *self.worker_pids()] if self.proc else []

    def stop(self) -> None:
        if self.proc is not None:
            self.ws.stop(self.proc)
            self.proc = None


class WebhookServer:
    """adnanh/webhook with one synchronous hook: the answer comes when the command has finished."""

    HOOK = "true-sync"

    def __init__(self, ws: Workspace, command: str = "/bin/true") -> None:
        self.ws = ws
        self.port = free_port()
        self.hooks = ws.path("hooks.json")
        self.hooks.write_text(
            json.dumps([{"id": self.HOOK, "execute-command": command, "include-command-output-in-response": True}])
        )
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}/hooks/{self.HOOK}"

    def start(self, timeout: float = 20.0) -> WebhookServer:
        binary = shutil.which("webhook")
        if binary is None:
            raise RuntimeError("webhook is not installed (scripts/install-test-deps installs it)")
        self.proc = self.ws.spawn(
            [binary, "-hooks", str(self.hooks), "-ip", LOOPBACK, "-port", str(self.port)], log="webhook.log"
        )

        def ready() -> bool:
            if self.proc is not None and exited(self.proc):
                raise RuntimeError("webhook exited; see webhook.log in the temp dir (--keep)")
            return port_open(self.port)

        try:
            wait_for(ready, timeout, f"webhook on port {self.port}")
        except BaseException:
            self.stop()
            raise
        return self

    def server_pids(self) -> list[int]:
        return [self.proc.pid] if self.proc else []

    def stop(self) -> None:
        if self.proc is not None:
            self.ws.stop(self.proc)
            self.proc = None


class StackServer:
    """The stack's own limit: ``stack_app`` under gunicorn's gthread worker with flwd's shape.

    ``workers`` and ``threads`` are what the flwd of the same figure gets; the other settings
    are those ``flwd :serve`` gives gunicorn (keep-alive 5 s, worker connections)."""

    def __init__(self, ws: Workspace, python: str, workers: int, threads: int) -> None:
        self.ws = ws
        self.python = python
        self.workers = workers
        self.threads = threads
        self.port = free_port()
        self.name = ws.unique("stack")
        self.dir = ws.path(self.name)
        self.dir.mkdir()
        self.db = self.dir / "stack.db"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}/runs"

    def start(self, timeout: float = 60.0) -> StackServer:
        from .stack_app import create_db

        create_db(str(self.db))
        scripts = str(Path(__file__).resolve().parent.parent)
        env = {**os.environ, "PYTHONPATH": scripts, "STACK_DB": str(self.db), "PYTHONUNBUFFERED": "1"}
        args = [self.python, "-m", "gunicorn", "--worker-class", "gthread", "--workers", str(self.workers)]
        args += ["--threads", str(self.threads), "--worker-connections", str(max(1000, self.threads * 4))]
        args += ["--keep-alive", "5", "--bind", f"{LOOPBACK}:{self.port}", "--log-level", "warning"]
        args += ["flwd_bench.stack_app:app"]
        self.proc = self.ws.spawn(args, log=f"{self.name}.log", env=env)

        def ready() -> bool:
            if self.proc is not None and exited(self.proc):
                raise RuntimeError(f"the stack-limit app exited; see {self.name}.log in the temp dir (--keep)")
            return len(procs.children(self.proc.pid)) >= self.workers and port_open(self.port)

        try:
            wait_for(ready, timeout, f"the stack-limit app on port {self.port}")
        except BaseException:
            self.stop()
            raise
        return self

    def server_pids(self) -> list[int]:
        return [self.proc.pid, *procs.children(self.proc.pid)] if self.proc else []

    def stop(self) -> None:
        if self.proc is not None:
            self.ws.stop(self.proc)
            self.proc = None
