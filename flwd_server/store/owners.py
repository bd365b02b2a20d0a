"""Who runs what: owner ids, liveness, and runs lost with the process that ran them.

Each process that executes runs registers itself as an *owner*
(``host:pid:starttime``, unique even after pid reuse) and sends a heartbeat.
On its own host an owner is alive while its process is (checked through
``/proc``); an owner on another host is alive while its heartbeat is younger
than ``liveness_timeout``.  Heartbeats are written in the database's clock
where there is one (PostgreSQL), so nodes whose clocks disagree do not declare
each other dead.  A run whose owner is dead ends ``lost``, and the process
group it left behind is killed once it is proven to be that run's.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..config import Settings
from .queries import insert_run_finished

log = logging.getLogger("flwd.runner")  # lost runs are the runner's news, as they always were
LIVENESS_TIMEOUT = Settings.liveness_timeout  # the setting's default
HOSTNAME = socket.gethostname()


def _proc_start_time(pid: int) -> str | None:
    """The start time of a *living* process; None if it is gone or a zombie.

    A killed process whose parent died too stays a zombie where PID 1 does not
    reap (a container without an init): it must count as dead.
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    if fields[0] in ("Z", "X"):
        return None
    return fields[19]


def owner_id(pid: int | None = None) -> str:
    """``host:pid:starttime`` names this process uniquely, even after pid reuse."""
    pid = pid or os.getpid()
    return f"{HOSTNAME}:{pid}:{_proc_start_time(pid) or '0'}"


def owner_is_dead(
    owner: str,
    host: str,
    pid: int,
    heartbeat_at: float | None,
    *,
    me: str | None = None,
    timeout: float = LIVENESS_TIMEOUT,
) -> bool:
    """Whether ``owner`` is gone: on this host, its process is (pid and start time); elsewhere,
    its heartbeat is older than ``timeout`` (``liveness_timeout``)."""
    if owner == me:
        return False
    parts = owner.split(":")
    if len(parts) in (3, 4) and parts[0] == HOSTNAME and parts[1].isdigit():  # 4: re-registered (see _declared_dead)
        start = _proc_start_time(int(parts[1]))
        return start is None or start != parts[2]
    return heartbeat_at is None or time.time() - heartbeat_at > timeout


def kill_orphan_group(run_id: str, pgid: int | None) -> bool:
    """Kill a lost run's leftover process group, but only if it really is that run's."""
    if not pgid:
        return False
    try:
        environ = Path(f"/proc/{pgid}/environ").read_bytes()
    except OSError:
        return False
    if f"FLWD_RUN_ID={run_id}".encode() not in environ.split(b"\0"):
        return False
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)
        return True
    return False


NEVER_STARTED = "the process it was queued for stopped before it started"


def recover_lost_runs(
    store: Any, me: str | None = None, reason: str = "the process running it stopped", timeout: float = LIVENESS_TIMEOUT
) -> list[str]:
    """End the runs whose owning process is gone (``lost``), killing what they left behind.

    Queued runs meant for one process only (a CLI's local runs) whose process is gone end
    ``lost`` too: nothing else would ever claim them.
    """

    def is_dead(o: str, h: str, p: int, b: float | None) -> bool:
        return owner_is_dead(o, h, p, b, me=me, timeout=timeout)

    lost = store.mark_lost(is_dead, reason)
    for run_id, pgid in lost:
        kill_orphan_group(run_id, pgid)
        log.warning("run %s ended lost: %s", run_id, reason)
    stranded = store.mark_stranded(is_dead, NEVER_STARTED)
    for run_id in stranded:
        log.warning("run %s ended lost: %s", run_id, NEVER_STARTED)
    return [run_id for run_id, _ in lost] + stranded


class OwnerRecords:
    """The owners table, part of every store.

    ``DB_CLOCK`` is an SQL expression for the database's own clock, or None
    where the database shares this process's clock (SQLite, on this host).
    """

    DB_CLOCK: str | None = None

    def _clock(self) -> tuple[str, tuple[float, ...]]:
        """SQL for "now" in heartbeats, and its parameters."""
        if self.DB_CLOCK is not None:
            return self.DB_CLOCK, ()
        return "?", (time.time(),)

    def register_owner(self, owner: str, host: str, pid: int) -> None:
        now, at = self._clock()
        self.write(
            lambda conn: conn.execute(
                f"INSERT INTO owners(owner, host, pid, started_at, heartbeat_at) VALUES (?, ?, ?, {now}, {now}) "
                "ON CONFLICT(owner) DO UPDATE SET host = excluded.host, pid = excluded.pid, "
                "started_at = excluded.started_at, heartbeat_at = excluded.heartbeat_at",
                (owner, host, pid, *at, *at),
            )
        )

    def heartbeat(self, owner: str) -> bool:
        """Say ``owner`` is alive; False if its row is gone (another process declared it dead)."""
        now, at = self._clock()
        return bool(
            self.write(
                lambda conn: (
                    conn.execute(f"UPDATE owners SET heartbeat_at = {now} WHERE owner = ?", (*at, owner)).rowcount
                )
            )
        )

    def _clock_skew(self, conn: Any) -> float:
        """Our clock minus the one heartbeats are written in."""
        if self.DB_CLOCK is None:
            return 0.0
        before = time.time()
        db_now = float(conn.execute(f"SELECT {self.DB_CLOCK}").fetchone()[0])
        return (before + time.time()) / 2 - db_now

    def unregister_owner(self, owner: str) -> None:
        self.write(lambda conn: conn.execute("DELETE FROM owners WHERE owner = ?", (owner,)))

    def owners(self) -> list[tuple[str, str, int, float]]:
        return self.reader().execute("SELECT owner, host, pid, heartbeat_at FROM owners").fetchall()

    def live_owner_count(self, timeout: float) -> int:
        """How many owners said they were alive within ``timeout`` seconds, judged in the clock their
        heartbeats are written in (the database's, on PostgreSQL: a node's own clock may be off)."""
        conn = self.reader()
        now = time.time() - self._clock_skew(conn)
        beats = conn.execute("SELECT heartbeat_at FROM owners").fetchall()
        return sum(1 for (beat,) in beats if beat is not None and now - beat <= timeout)

    def mark_stranded(self, is_dead: Callable[[str, str, int, float | None], bool], reason: str) -> list[str]:
        """End every queued run whose *affinity* owner ``is_dead``; returns their ids.

        An owner that has not registered yet is judged by the run's creation time as its
        heartbeat, so a run just queued for a process that is still starting is left alone.
        """
        now = time.time()

        def op(conn: Any) -> list[str]:
            skew = self._clock_skew(conn)
            owners = {
                row[0]: (row[1], row[2], row[3] + skew)
                for row in conn.execute("SELECT owner, host, pid, heartbeat_at FROM owners")
            }
            stranded = []
            rows = conn.execute(
                "SELECT id, affinity, created_at FROM runs WHERE status = 'queued' AND affinity IS NOT NULL"
            ).fetchall()
            for run_id, owner, created in rows:
                host, pid, beat = owners.get(owner, ("", 0, created))
                if not is_dead(owner, host, pid, beat):
                    continue
                conn.execute(
                    "UPDATE runs SET status = 'lost', finished_at = ?, reason = ? WHERE id = ? AND status = 'queued'",
                    (now, reason, run_id),
                )
                insert_run_finished(
                    conn, run_id, now, {"status": "lost", "exit_code": None, "duration": 0.0, "reason": reason}
                )
                stranded.append(run_id)
            return stranded

        return self.write(op)

    def mark_lost(
        self, is_dead: Callable[[str, str, int, float | None], bool], reason: str
    ) -> list[tuple[str, int | None]]:
        """End every running run whose owner ``is_dead``; returns ``(run_id, pgid)`` of each.

        ``is_dead(owner, host, pid, heartbeat_at)`` decides; runs whose owner
        row is gone are passed ``heartbeat_at=None``.
        """
        now = time.time()

        def op(conn: Any) -> list[tuple[str, int | None]]:
            skew = self._clock_skew(conn)  # heartbeats in the database's clock, read in ours
            owners = {
                row[0]: (row[1], row[2], row[3] + skew)
                for row in conn.execute("SELECT owner, host, pid, heartbeat_at FROM owners")
            }
            lost = []
            rows = conn.execute("SELECT id, owner, pgid, started_at FROM runs WHERE status = 'running'").fetchall()
            dead_owners = set()
            for run_id, owner, pgid, started in rows:
                host, pid, beat = owners.get(owner, ("", 0, None))
                if not is_dead(owner or "", host, pid, beat):
                    continue
                dead_owners.add(owner)
                conn.execute(
                    "UPDATE runs SET status = 'lost', finished_at = ?, reason = ?, pgid = NULL WHERE id = ?",
                    (now, reason, run_id),
                )
                duration = round(now - (started or now), 6)
                insert_run_finished(
                    conn, run_id, now, {"status": "lost", "exit_code": None, "duration": duration, "reason": reason}
                )
                lost.append((run_id, pgid))
            for owner, (host, pid, beat) in owners.items():
                if owner not in dead_owners and is_dead(owner, host, pid, beat):
                    dead_owners.add(owner)
            for owner in dead_owners:
                conn.execute("DELETE FROM owners WHERE owner = ?", (owner,))
            return lost

        return self.write(op)
