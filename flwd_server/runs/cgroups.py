"""A cgroup per run: every process a run starts can be found, capped and killed.

A process group is not enough: ``setsid`` or a double fork leaves it, and
``killpg`` never reaches what left.  A cgroup cannot be left by an unprivileged
step, and the kernel moves every child into its parent's group at fork.

* **Where.** Groups are made only below the server's own group in each
  hierarchy (read from ``/proc/self/cgroup``): ``flwd-<database>/<run id>``.
  The cgroup2 group kills (``cgroup.kill``: every member at once, no race with
  a fork); the ``pids`` and ``memory`` controllers cap.  On a pure cgroup2
  host one group does both; on a hybrid host the cgroup2 hierarchy has no
  controllers, so the caps come from the cgroup1 ``pids`` and ``memory``
  hierarchies, where the step is a member too.
* **Joining.** A step's shell writes its own pid into each of its run's groups
  in its prologue, before the script runs, so nothing can fork before the
  move and spawning keeps its fast path.
* **Leaving nothing.** After each step, on cancel, timeout and shutdown the
  run's groups are killed and waited empty; at the end of the run they are
  removed, and a starting server removes what a killed one left behind.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import os
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..models import Containment, Profile

log = logging.getLogger("flwd.cgroups")

PROC_CGROUP = Path("/proc/self/cgroup")
MOUNTINFO = Path("/proc/self/mountinfo")


@dataclass(frozen=True)
class CgroupLayout:
    """The server's own groups: where run groups are made, per purpose (None: not available)."""

    killer: Path | None  # a cgroup2 group: cgroup.kill, cgroup.events
    pids: Path | None
    memory: Path | None
    pids_v2: bool = False  # pids/memory in the cgroup2 group (pure v2) rather than cgroup1
    memory_v2: bool = False

    @property
    def usable(self) -> bool:
        return self.killer is not None or self.pids is not None

    def containment(self) -> Containment:
        mechanism = "cgroup2" if self.killer is not None else "cgroup1" if self.pids is not None else None
        caps = {name for name, where in (("processes", self.pids), ("memory", self.memory)) if where is not None}
        return Containment(mechanism, frozenset(caps))

    def describe(self) -> str:
        parts = []
        if self.killer is not None:
            parts.append("cgroup2 (kill)")
        if self.pids is not None:
            parts.append("pids" + (" (cgroup2)" if self.pids_v2 else " (cgroup1)"))
        if self.memory is not None:
            parts.append("memory" + (" (cgroup2)" if self.memory_v2 else " (cgroup1)"))
        return ", ".join(parts) or "none"


def _mounts() -> list[tuple[str, str, str, set[str]]]:
    """(mount point, root inside the hierarchy, fstype, options) of every cgroup mount."""
    out = []
    try:
        text = MOUNTINFO.read_text()
    except OSError:
        return out
    for line in text.splitlines():
        fields = line.split()
        try:
            sep = fields.index("-")
        except ValueError:
            continue
        fstype = fields[sep + 1]
        if fstype not in ("cgroup", "cgroup2"):
            continue
        options = set(fields[sep + 3].split(",")) if len(fields) > sep + 3 else set()
        out.append((fields[4], fields[3], fstype, options))
    return out


def _own_groups() -> dict[str, str]:
    """The server's group per hierarchy: ``""`` for cgroup2, controller names for cgroup1."""
    out = {}
    try:
        text = PROC_CGROUP.read_text()
    except OSError:
        return out
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        if not controllers:
            out[""] = path
        for name in controllers.split(","):
            if name:
                out[name] = path
    return out


def _group_dir(mount: str, root: str, path: str) -> Path | None:
    """The directory of ``path`` (as /proc/self/cgroup names it) under a mount of ``root``."""
    if root != "/" and path != root and not path.startswith(root.rstrip("/") + "/"):
        return None
    relative = path[len(root) :] if root != "/" else path
    return Path(mount) / relative.lstrip("/")


def _writable(directory: Path | None) -> bool:
    return directory is not None and directory.is_dir() and os.access(directory, os.W_OK)


def _children_have_kill(directory: Path) -> bool:
    """Whether a group made here has ``cgroup.kill`` (Linux 5.14+; the root group itself never has it)."""
    if (directory / "cgroup.kill").exists():
        return True
    probe = directory / f"flwd-probe-{os.getpid()}"
    try:
        probe.mkdir()
    except OSError:
        return False
    try:
        return (probe / "cgroup.kill").exists()
    finally:
        _rmdir(probe)


def discover() -> CgroupLayout:
    """Which hierarchies this process may make groups in, below its own groups."""
    own = _own_groups()
    killer = pids = memory = None
    pids_v2 = memory_v2 = False
    for mount, root, fstype, options in _mounts():
        if fstype == "cgroup2" and "" in own and killer is None:
            directory = _group_dir(mount, root, own[""])
            if _writable(directory) and _children_have_kill(directory):  # type: ignore[arg-type]
                killer = directory
                # Our children have a controller only if our group enables it for them (a delegated group).
                controllers = set((directory / "cgroup.subtree_control").read_text().split())  # type: ignore[operator]
                if "pids" in controllers:
                    pids, pids_v2 = directory, True
                if "memory" in controllers:
                    memory, memory_v2 = directory, True
        elif fstype == "cgroup":
            for name in ("pids", "memory"):
                if name in options and name in own:
                    directory = _group_dir(mount, root, own[name])
                    if _writable(directory):
                        if name == "pids" and pids is None:
                            pids = directory
                        elif name == "memory" and memory is None:
                            memory = directory
    return CgroupLayout(killer, pids, memory, pids_v2, memory_v2)


def base_name(database: str) -> str:
    """The parent group of a database's runs: servers of other databases never touch it."""
    return "flwd-" + hashlib.sha256(database.encode()).hexdigest()[:12]


CAP_SETTINGS = {"processes": ("max_processes", "tasks"), "memory": ("memory_bytes", "bytes of memory")}


def cap_reason(cap: str, policy: Any) -> str:
    """Why a run stopped, naming the cap it reached (``cap`` from :meth:`RunGroup.cap_reached`)."""
    setting, unit = CAP_SETTINGS[cap]
    return f"the run reached its cap of {getattr(policy, setting)} {unit} (policy.{setting})"


@dataclass(frozen=True)
class Caps:
    max_processes: int | None = None
    memory_bytes: int | None = None

    @classmethod
    def of(cls, profile: Profile, policy: Any) -> Caps:
        """A run's caps: the policy's, except under ``disabled``, which caps nothing."""
        if profile is Profile.DISABLED:
            return cls()
        return cls(max_processes=policy.max_processes, memory_bytes=policy.memory_bytes)


class RunGroup:
    """The cgroups of one run, in every usable hierarchy."""

    def __init__(self, layout: CgroupLayout, base: str, name: str) -> None:
        self.layout = layout
        self.killer = layout.killer / base / name if layout.killer else None
        self.pids = layout.pids / base / name if layout.pids else None
        self.memory = layout.memory / base / name if layout.memory else None
        self.caps: Caps | None = None  # as last written
        self.reaper: Any = None  # the process's Subreaper, if it has one
        self._baseline = (0, 0)  # the cap counters when the current run began (a pooled group is reused)

    @property
    def dirs(self) -> list[Path]:
        return list(dict.fromkeys(d for d in (self.killer, self.pids, self.memory) if d is not None))

    def create(self, caps: Caps) -> None:
        for directory in self.dirs:
            directory.parent.mkdir(exist_ok=True)
            if directory == self.killer and (self.layout.pids_v2 or self.layout.memory_v2):
                # cgroup2: a group's children get a controller only if the group enables it (it holds no process)
                wanted = " ".join(
                    f"+{n}" for n, on in (("pids", self.layout.pids_v2), ("memory", self.layout.memory_v2)) if on
                )
                with contextlib.suppress(OSError):
                    (directory.parent / "cgroup.subtree_control").write_text(wanted)
            directory.mkdir(exist_ok=True)
        self.set_caps(caps)

    def set_caps(self, caps: Caps) -> None:
        if caps == self.caps:
            return
        if self.pids is not None:
            (self.pids / "pids.max").write_text(str(caps.max_processes or "max"))
        if self.memory is not None:
            limit = caps.memory_bytes
            # Swap counts too: a cap that swapping can step around caps nothing.
            if self.layout.memory_v2:
                (self.memory / "memory.max").write_text(str(limit or "max"))
                with contextlib.suppress(OSError):  # absent without swap accounting
                    (self.memory / "memory.swap.max").write_text("0" if limit else "max")
            else:  # cgroup1 wants memsw >= the limit at every moment: lower the limit first, raise memsw first
                memory, memsw = self.memory / "memory.limit_in_bytes", self.memory / "memory.memsw.limit_in_bytes"
                value = str(limit or -1)
                if limit:
                    memory.write_text(value)
                with contextlib.suppress(OSError):
                    memsw.write_text(value)
                if not limit:
                    memory.write_text(value)
        self.caps = caps

    def begin(self) -> None:
        """A run starts in this group: what its caps refuse from now on is its own."""
        self._baseline = self._counters()

    def _counters(self) -> tuple[int, int]:
        memory = pids = 0
        if self.memory is not None:
            name = "memory.events" if self.layout.memory_v2 else "memory.oom_control"
            memory = _counter(self.memory / name, b"oom_kill")
        if self.pids is not None:
            pids = _counter(self.pids / "pids.events", b"max")
        return memory, pids

    # Joining happens in the step's shell itself; these only tell this process's subreaper (runs/reaper.py,
    # which reaps what a killed step leaves) which pid is a step's shell, whose status is subprocess's.
    def spawning(self) -> contextlib.AbstractContextManager[None]:
        return self.reaper.spawning() if self.reaper is not None else contextlib.nullcontext()

    def spawned(self, pid: int, pipes: tuple[int, ...] = ()) -> None:
        if self.reaper is not None:
            self.reaper.spawned(pid)

    def waited(self, pid: int) -> None:
        if self.reaper is not None:
            self.reaper.waited(pid)

    def settled(self) -> bool:
        """No process left, not even a zombie that still counts against ``pids.max`` (cgroup1)."""
        if self.pids is not None and not self.layout.pids_v2:
            try:
                return _read(self.pids / "pids.current").strip() == b"0"
            except OSError:
                return True
        return self.empty()

    def join_commands(self) -> list[str]:
        """Shell lines that move the shell running them into every group of the run."""
        return [f"echo $$ > {_quote(str(d / 'cgroup.procs'))}" for d in self.dirs]

    def members(self) -> list[int]:
        pids: set[int] = set()
        for directory in self.dirs:
            with contextlib.suppress(OSError):
                pids.update(int(p) for p in (directory / "cgroup.procs").read_text().split())
        return sorted(pids)

    def empty(self) -> bool:
        """One read: cgroup2 says whether the group holds any process (``cgroup.events``)."""
        if self.killer is not None:
            try:
                return b"populated 0" in _read(self.killer / "cgroup.events")
            except OSError:
                return True
        return not self.members()

    def kill(self, timeout: float = 5.0) -> bool:
        """Kill every member and wait until none is left (``timeout=0``: do not wait); False if some are left."""
        if self.empty():  # the usual case after a step: nothing left, nothing to write
            return True
        deadline = time.monotonic() + timeout
        while True:
            if self.killer is not None:
                with contextlib.suppress(OSError):
                    (self.killer / "cgroup.kill").write_text("1")
            members = self.members()
            if not members:
                return True
            if self.killer is None:
                for pid in members:  # cgroup1 only: signal each; new forks are caught by the next pass
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.kill(pid, signal.SIGKILL)
            if timeout <= 0:
                return False
            if time.monotonic() >= deadline:
                log.warning("processes %s of a run survived being killed", members)
                return False
            time.sleep(0.005)

    def cap_reached(self) -> str | None:
        """The cap that refused something since :meth:`begin`, if one did: the reason a run stopped."""
        memory, pids = self._counters()
        if memory > self._baseline[0]:
            return "memory"
        if pids > self._baseline[1]:
            return "processes"
        return None

    def remove(self) -> None:
        """Kill what is left and remove the groups (and the base, once it is empty)."""
        self.kill()
        for directory in self.dirs:
            _rmdir(directory)
            _rmdir(directory.parent, quiet=True)


def _read(path: Path) -> bytes:
    """A small control file in one read: a run reads five, at half pathlib's cost (12 against 22 us)."""
    with open(path, "rb", buffering=0) as fh:
        return fh.read(65536)


def _counter(path: Path, key: bytes) -> int:
    try:
        for line in _read(path).splitlines():
            name, _, value = line.partition(b" ")
            if name == key:
                return int(value)
    except (OSError, ValueError):
        pass
    return 0


def _rmdir(directory: Path, quiet: bool = False) -> None:
    try:
        directory.rmdir()
    except FileNotFoundError:
        pass
    except OSError as exc:
        if not quiet and exc.errno != errno.ENOENT:
            log.warning("could not remove cgroup %s: %s", directory, exc.strerror)


def _quote(text: str) -> str:
    return "'" + text.replace("'", "'\\''") + "'"


def leftover_groups(layout: CgroupLayout, base: str) -> set[str]:
    """The groups under ``base`` in any hierarchy, by name."""
    out: set[str] = set()
    for root in (layout.killer, layout.pids, layout.memory):
        if root is None:
            continue
        with contextlib.suppress(OSError):
            out.update(entry.name for entry in os.scandir(root / base) if entry.is_dir())
    return out


class GroupPool:
    """One process's run groups, made once and reused: making and removing cgroups costs ~1 ms a run.

    A group is named after its process (``PID.STARTTIME.N``), so a starting server can tell the
    groups of processes that are gone (:func:`sweep_leftovers`) from those of live ones.
    """

    def __init__(self, layout: CgroupLayout, base: str, reaper: Any = None) -> None:
        self.layout = layout
        self.base = base
        self.reaper = reaper  # reaps the zombies of killed steps, so a group is clean for its next run
        pid = os.getpid()
        self.tag = f"{pid}.{process_start(pid)}"
        self.idle: list[RunGroup] = []
        self.retired: list[RunGroup] = []  # not clean yet: removed once they are
        self.made = 0
        self._lock = threading.Lock()

    def acquire(self, run_id: str, caps: Caps) -> RunGroup | None:
        """A group for a run, capped; None where it cannot be made (the run is contained by its process group)."""
        with self._lock:
            group = self.idle.pop() if self.idle else None
            if group is None:
                self.made += 1
                group = RunGroup(self.layout, self.base, f"{self.tag}.{self.made}")
                group.reaper = self.reaper
        try:
            if group.caps is None:
                group.create(caps)
            else:
                group.set_caps(caps)
        except OSError as exc:
            log.warning("run %s: no cgroup (%s); its processes are contained by their process group only", run_id, exc)
            group.remove()
            return None
        group.begin()
        return group

    def release(self, group: RunGroup, timeout: float = 1.0) -> bool:
        """Kill what the run left in its group and keep the group for the next run once clean; whether it is."""
        group.kill()
        deadline = time.monotonic() + timeout
        while not self._settle(group) and time.monotonic() < deadline:
            time.sleep(0.005)  # killed processes take a moment to die and be reaped
        clean = self._settle(group)
        with self._lock:
            retired, self.retired = self.retired, []
            if clean:
                self.idle.append(group)
        left = []
        for old in retired:  # groups that were not clean at their release go once they are
            if self._settle(old):
                old.remove()
            else:
                left.append(old)
        with self._lock:
            self.retired.extend(left + ([] if clean else [group]))
        return clean

    def _settle(self, group: RunGroup) -> bool:
        """Whether the group is clean, reaping the zombies of its killed processes if it is not."""
        if group.settled():
            return True
        if self.reaper is not None:
            self.reaper.reap()
        return group.settled()

    def close(self) -> None:
        with self._lock:
            groups, self.idle, self.retired = self.idle + self.retired, [], []
        for group in groups:
            group.remove()


def process_start(pid: int) -> str:
    """A live process's start time (clock ticks since boot): with the pid, it names one process for good.

    "0" for a process that is gone or a zombie: a killed worker whose master died too waits,
    a zombie, until PID 1 reaps it, which some container inits do only now and then.
    """
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            fields = fh.read().rsplit(b")", 1)[1].split()
    except OSError:
        return "0"
    if len(fields) < 20 or fields[0] in (b"Z", b"X"):
        return "0"
    return fields[19].decode()


def leftover_bases(layout: CgroupLayout) -> set[str]:
    """The ``flwd-<database>`` groups in any hierarchy."""
    out: set[str] = set()
    for root in (layout.killer, layout.pids, layout.memory):
        if root is not None:
            with contextlib.suppress(OSError):
                out.update(e.name for e in os.scandir(root) if e.is_dir() and e.name.startswith("flwd-"))
    return out


def sweep_leftovers(layout: CgroupLayout | None, base: str, quiet: bool = False) -> list[str]:
    """Kill and remove the groups of processes that are gone (a killed server's); returns their names."""
    if layout is None or not layout.usable:
        return []
    swept = []
    for name in sorted(leftover_groups(layout, base)):
        pid, _, rest = name.partition(".")
        start = rest.partition(".")[0]
        if pid.isdigit() and process_start(int(pid)) == start:
            continue  # a live process's group, ours or another worker's
        RunGroup(layout, base, name).remove()
        swept.append(name)
    if swept and not quiet:
        log.warning("removed the cgroups (and any process in them) of processes that are gone: %s", ", ".join(swept))
    return swept
