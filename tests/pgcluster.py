"""A throwaway PostgreSQL cluster for the tests and scripts/bench: initdb + pg_ctl in a temp dir.

Plain Python (no pytest): tests/fixtures/postgres.py wraps it in fixtures, the
bench (figure 6) starts one for its nodes.

The cluster runs as an unprivileged user (initdb refuses root): as ``nobody``
when the tests run as root, as the current user otherwise.  It listens on a
free loopback port and on a Unix socket in its own directory, trusts local
connections (it is reachable only from this machine and lives for one test
session), and runs with ``fsync=off``: a crash of the test machine loses
nothing that matters, and the tests measure flwd, not the disk.  The bench
asks for ``fsync=on`` (``durable=True``) and keeps ``synchronous_commit=off``:
a commit does not wait for its WAL flush, as SQLite's ``synchronous=normal``
(flwd's default) does not.
"""

from __future__ import annotations

import contextlib
import glob
import itertools
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

SEARCH_DIRS = sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def find_tool(name: str) -> str | None:
    """``initdb``/``pg_ctl`` on PATH, else in Debian's versioned directory (not on PATH)."""
    found = shutil.which(name)
    if found:
        return found
    for directory in SEARCH_DIRS:
        path = os.path.join(directory, name)
        if os.access(path, os.X_OK):
            return path
    return None


class PostgresCluster:
    """One cluster; :meth:`create_database` hands out fresh, empty databases."""

    def __init__(self, root: Path, initdb: str, pg_ctl: str, durable: bool = False) -> None:
        self.durable = durable
        self.root = Path(root)
        self.data = self.root / "data"
        self.socket_dir = self.root / "sock"
        self.log = self.root / "postgres.log"
        self.initdb = initdb
        self.pg_ctl = pg_ctl
        self.port = free_port()
        self.user = "flwd"
        self._names = itertools.count(1)
        self._as: list[str] = []
        if os.geteuid() == 0:
            self._as = ["runuser", "-u", "nobody", "--"]

    def _run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*self._as, *args], capture_output=True, text=True, timeout=timeout, check=False, cwd=self.root)

    def start(self) -> PostgresCluster:
        self.root.mkdir(parents=True, exist_ok=True)
        self.socket_dir.mkdir(exist_ok=True)
        if self._as:
            nobody = pwd.getpwnam("nobody")
            for path in (self.root, self.socket_dir):
                os.chown(path, nobody.pw_uid, nobody.pw_gid)
            # nobody must be able to reach the directory: open every parent for traversal only.
            parent = self.root.parent
            while parent != parent.parent:
                mode = parent.stat().st_mode
                if not mode & 0o001:
                    os.chmod(parent, mode | 0o001)
                parent = parent.parent
        done = self._run(self.initdb, "-D", str(self.data), "-A", "trust", "-U", self.user, "-E", "UTF8", "--no-sync")
        if done.returncode != 0:
            raise RuntimeError(f"initdb failed: {done.stdout}{done.stderr}")
        options = " ".join(
            [
                f"-p {self.port}",
                f"-k {self.socket_dir}",
                "-c listen_addresses=127.0.0.1",
                "-c fsync=on" if self.durable else "-c fsync=off",
                "-c synchronous_commit=off",
                "-c full_page_writes=on" if self.durable else "-c full_page_writes=off",
                "-c max_connections=400",
                "-c shared_buffers=64MB",
            ]
        )
        done = self._run(self.pg_ctl, "-D", str(self.data), "-l", str(self.log), "-o", options, "-w", "-t", "60", "start")
        if done.returncode != 0:
            log = self.log.read_text(errors="replace") if self.log.exists() else ""
            raise RuntimeError(f"pg_ctl start failed: {done.stdout}{done.stderr}{log}")
        return self

    def stop(self) -> None:
        if self.data.exists():
            self._run(self.pg_ctl, "-D", str(self.data), "-m", "immediate", "-w", "-t", "30", "stop", timeout=60)

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{database}"

    def admin(self) -> Any:
        import psycopg

        return psycopg.connect(self.url(), autocommit=True)

    def create_database(self, prefix: str = "flwd") -> str:
        """A new empty database; returns its URL."""
        name = f"{prefix}_{os.getpid()}_{next(self._names)}"
        with self.admin() as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def drop_database(self, url: str) -> None:
        name = url.rsplit("/", 1)[1]
        with contextlib.suppress(Exception), self.admin() as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextlib.contextmanager
def throwaway_cluster(root: str | os.PathLike[str] | None = None, durable: bool = False) -> Iterator[PostgresCluster]:
    """Start a cluster in ``root`` (a new temp dir by default); stop and delete it afterwards."""
    initdb, pg_ctl = find_tool("initdb"), find_tool("pg_ctl")
    if not initdb or not pg_ctl:
        raise RuntimeError("initdb/pg_ctl not found (scripts/install-test-deps installs postgresql)")
    base = Path(root) if root else Path(tempfile.mkdtemp(prefix="flwd-pg-"))
    cluster = PostgresCluster(base / "pg", initdb, pg_ctl, durable=durable)
    try:
        yield cluster.start()
    finally:
        cluster.stop()
        shutil.rmtree(base if root is None else cluster.root, ignore_errors=True)
