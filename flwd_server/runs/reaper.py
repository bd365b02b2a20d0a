"""Where no cgroup can be made: this process adopts what steps leave behind, finds it and kills it.

With ``PR_SET_CHILD_SUBREAPER`` a process that loses its parent (a ``setsid``
or double-forked child of a step) is re-parented to this process instead of
PID 1, so it stays one of our descendants.  A run's processes are the ones
whose environment carries its ``FLWD_RUN_ID`` and everything they started.

Reaping takes care not to steal an exit status: ``subprocess`` waits for the
pids it started (a step's shell, git), and a status reaped by someone else is
lost (``Popen`` would report 0).  So only adopted processes are reaped: never
a pid in our own process group (git and other helpers are started there),
never a step's shell while its step runs (steps are spawned under a lock the
sweep also takes, so no shell is missed between fork and registration).
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator

log = logging.getLogger("flwd.reaper")

PR_SET_CHILD_SUBREAPER = 36


def become_subreaper(on: bool = True) -> bool:
    """Make orphaned descendants of this process its children (Linux 3.4+), or stop doing so."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_CHILD_SUBREAPER, int(on), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _stat(pid: str) -> tuple[int, int, bytes] | None:
    """(ppid, pgid, state) of a process, or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            fields = fh.read().rsplit(b")", 1)[1].split()
    except OSError:
        return None
    return int(fields[1]), int(fields[2]), fields[0]


def _run_of(pid: str) -> str | None:
    try:
        with open(f"/proc/{pid}/environ", "rb") as fh:
            environ = fh.read()
    except OSError:
        return None
    for item in environ.split(b"\0"):
        if item.startswith(b"FLWD_RUN_ID="):
            return item[12:].decode("ascii", "replace")
    return None


def _holds(pid: str, pipes: frozenset[str]) -> bool:
    try:
        with os.scandir(f"/proc/{pid}/fd") as fds:
            for fd in fds:
                with contextlib.suppress(OSError):
                    if os.readlink(fd.path) in pipes:
                        return True
    except OSError:
        pass
    return False


class Subreaper:
    """One per process: finds, kills and reaps what steps of any run left behind."""

    def __init__(self) -> None:
        self.enabled = become_subreaper()
        self._lock = threading.Lock()
        self._steps: set[int] = set()  # shells of running steps: subprocess reaps them

    def close(self) -> None:
        """The runner stopped: reap what is left and let orphans go to PID 1 again (a CLI or test process lives on)."""
        if self.enabled:
            self.reap()
            become_subreaper(False)
            self.enabled = False

    @contextlib.contextmanager
    def spawning(self) -> Iterator[None]:
        """Hold while a step's shell is started and registered (:meth:`spawned`)."""
        with self._lock:
            yield

    def spawned(self, pid: int) -> None:
        self._steps.add(pid)

    def waited(self, pid: int) -> None:
        with self._lock:
            self._steps.discard(pid)

    def processes_of(self, run_id: str, pipes: frozenset[str] = frozenset()) -> list[int]:
        """Live processes of a run: its ``FLWD_RUN_ID`` in their environment, holding its step's output
        pipes (``pipe:[inode]``: a process that cleared its environment still writes there), or a
        descendant of one."""
        table: dict[int, tuple[int, bytes]] = {}
        members: set[int] = set()
        me = os.getpid()
        with os.scandir("/proc") as entries:
            for entry in entries:
                if not entry.name.isdigit():
                    continue
                stat = _stat(entry.name)
                if stat is None:
                    continue
                pid = int(entry.name)
                table[pid] = (stat[0], stat[2])
                if stat[2] in (b"Z", b"X") or pid == me:  # we hold the pipes' reading ends: never a member,
                    continue  # else every child of ours (other runs' steps) would be one as a descendant
                if _run_of(entry.name) == run_id or (pipes and _holds(entry.name, pipes)):
                    members.add(pid)
        grew = True
        while grew:  # children of members, whatever environment they gave themselves
            grew = False
            for pid, (ppid, state) in table.items():
                if ppid in members and pid not in members and state not in (b"Z", b"X"):
                    members.add(pid)
                    grew = True
        return sorted(members)

    def runs_with_processes(self) -> set[str]:
        """The ``FLWD_RUN_ID`` of every live process this process may see."""
        out = set()
        with os.scandir("/proc") as entries:
            for entry in entries:
                if entry.name.isdigit():
                    run_id = _run_of(entry.name)
                    if run_id:
                        out.add(run_id)
        return out

    def adopted(self) -> list[int]:
        """Our live children that we did not start: what steps left behind, re-parented to us."""
        me, group, out = os.getpid(), os.getpgrp(), []
        children: set[int] = set()
        with contextlib.suppress(OSError), os.scandir(f"/proc/{me}/task") as tasks:
            for task in tasks:
                with contextlib.suppress(OSError), open(f"{task.path}/children", "rb") as fh:
                    children.update(int(pid) for pid in fh.read().split())
        for pid in children:
            stat = _stat(str(pid))
            if stat and stat[1] != group and pid not in self._steps and stat[2] not in (b"Z", b"X"):
                out.append(pid)
        return out

    def kill_leftovers(self, run_is_over: Callable[[str], bool]) -> None:
        """Kill the processes of runs that are over, wherever they are (a killed server left them)."""
        for run_id in self.runs_with_processes():
            if run_is_over(run_id):
                log.warning("killing what run %s left running", run_id)
                self.kill_run(run_id, everywhere=True)

    def kill_run(
        self, run_id: str, timeout: float = 5.0, pipes: frozenset[str] = frozenset(), everywhere: bool = False
    ) -> bool:
        """SIGKILL every process of the run until none is left (``timeout=0``: one pass); reap what we adopted.

        A step's processes are all our descendants (we are their subreaper): unless we adopted
        some, none is left and ``/proc`` need not be read.  ``everywhere`` looks further, for
        what a run of a process that died left behind.
        """
        if not everywhere and not self.adopted():
            self.reap()
            return True
        deadline = time.monotonic() + timeout
        while True:
            members = self.processes_of(run_id, pipes)
            for pid in members:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
            self.reap()
            if not members:
                return True
            if timeout <= 0:
                return False
            if time.monotonic() >= deadline:
                log.warning("processes %s of run %s survived being killed", members, run_id)
                return False
            time.sleep(0.005)

    def reap(self) -> int:
        """Collect the exit status of adopted children that ended; returns how many."""
        if not self.enabled:
            return 0
        me, group, reaped = os.getpid(), os.getpgrp(), 0
        with self._lock:
            with os.scandir("/proc") as entries:
                for entry in entries:
                    if not entry.name.isdigit():
                        continue
                    stat = _stat(entry.name)
                    if stat is None or stat[0] != me or stat[2] not in (b"Z", b"X"):
                        continue
                    pid = int(entry.name)
                    if stat[1] == group or pid in self._steps:
                        continue  # git's and the like (our group), or a step's shell: subprocess waits for them
                    with contextlib.suppress(ChildProcessError):
                        if os.waitpid(pid, os.WNOHANG)[0]:
                            reaped += 1
        return reaped


class RunReaper:
    """A run's view of the :class:`Subreaper`: what the host executor needs from containment."""

    def __init__(self, reaper: Subreaper, run_id: str) -> None:
        self.reaper = reaper
        self.run_id = run_id
        self.pipes: frozenset[str] = frozenset()  # the running step's stdout and stderr

    def join_commands(self) -> list[str]:
        return []

    def spawning(self) -> contextlib.AbstractContextManager[None]:
        return self.reaper.spawning()

    def spawned(self, pid: int, pipes: tuple[int, ...] = ()) -> None:
        self.reaper.spawned(pid)
        self.pipes = frozenset(f"pipe:[{os.fstat(fd).st_ino}]" for fd in pipes)

    def waited(self, pid: int) -> None:
        self.reaper.waited(pid)

    def kill(self, timeout: float = 5.0) -> bool:
        return self.reaper.kill_run(self.run_id, timeout, self.pipes)

    def cap_reached(self) -> str | None:
        return None

    def remove(self) -> None:
        self.kill()
