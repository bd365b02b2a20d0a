"""What the kernel says about a process tree: children, CPU time, resident memory.

Everything is read from ``/proc`` so the figures mean the same thing for flwd
(Python, several processes) and webhook (Go, one process).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def _stat_fields(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name may hold spaces and parentheses: split after the last ')'.
    return text.rsplit(")", 1)[1].split()


def children(pid: int) -> list[int]:
    """Direct children of ``pid`` (gunicorn's master -> its workers)."""
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        fields = _stat_fields(int(entry.name))
        # fields[0] is the state, fields[1] the parent pid; zombies are not alive.
        if fields and int(fields[1]) == pid and fields[0] not in ("Z", "X"):
            found.append(int(entry.name))
    return sorted(found)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of one process (its threads included, its children not)."""
    fields = _stat_fields(pid)
    if not fields:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def children_cpu_seconds(pid: int) -> float:
    """User + system CPU time of the children ``pid`` has waited for (and theirs): the commands."""
    fields = _stat_fields(pid)
    if not fields:
        return 0.0
    return (int(fields[13]) + int(fields[14])) / CLOCK_TICKS


def descendants(pid: int) -> list[int]:
    """``pid``'s children, their children, and so on (a database's backends under its postmaster)."""
    found, todo = [], [pid]
    while todo:
        kids = children(todo.pop())
        found += kids
        todo += kids
    return found


@dataclass(frozen=True)
class Memory:
    rss: int  # bytes, pages shared between forked workers counted once per process
    pss: int  # bytes, shared pages split between the processes that map them

    def __add__(self, other: Memory) -> Memory:
        return Memory(self.rss + other.rss, self.pss + other.pss)


def memory(pid: int) -> Memory:
    """RSS and PSS of one process (0 if it is gone)."""
    rss = pss = 0
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Rss:"):
                rss = int(line.split()[1]) * 1024
            elif line.startswith("Pss:"):
                pss = int(line.split()[1]) * 1024
    except OSError:
        try:
            rss = int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE
        except OSError:
            return Memory(0, 0)
        pss = rss
    return Memory(rss, pss)


def total_memory(pids: list[int]) -> Memory:
    out = Memory(0, 0)
    for pid in pids:
        out += memory(pid)
    return out


def total_cpu(pids: list[int]) -> float:
    return sum(cpu_seconds(pid) for pid in pids)


def total_children_cpu(pids: list[int]) -> float:
    return sum(children_cpu_seconds(pid) for pid in pids)


def processes_under(root: Path) -> list[int]:
    """Processes whose working directory lies inside ``root`` (jobs the bench's servers started)."""
    prefix = str(root.resolve())
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cwd = os.readlink(f"/proc/{entry.name}/cwd")
        except OSError:
            continue
        if cwd == prefix or cwd.startswith(prefix + "/"):
            found.append(int(entry.name))
    return found
