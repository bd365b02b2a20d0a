"""Shell steps on the host: own process group, both pipes read together, nothing left behind.

* ``start_new_session`` puts the step in its own process group, so cancel and
  timeout reach every process it forked (``killpg``), not just the shell.
* stdout and stderr are read with one selector in fixed-size chunks, so
  neither pipe can fill and block the child, and a 50 MB line without a
  newline costs at most ``max_line_bytes`` of memory (:mod:`.capture`).
* Arguments reach the script only as ``FLWD_ARG_*`` variables; the script text
  is the job author's, never spliced with user input.
* Resource limits are set by a tiny ``sh`` prologue (``ulimit``) rather than a
  ``preexec_fn``, which is unsafe in a threaded server; the same prologue
  moves the shell into its run's cgroups (:mod:`.cgroups`), and killing those
  reaches what left the process group (``setsid``, double forks).
"""

from __future__ import annotations

import contextlib
import os
import selectors
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from ..models import Step
from .capture import StepOutput

KILL_GRACE = 2.0
DRAIN_AFTER_EXIT = 0.5


@dataclass
class StepOutcome:
    exit_code: int | None
    status: str  # succeeded | failed | timed_out | cancelled
    duration: float
    reason: str | None = None  # why a step that never ran its command failed (the run's reason)


@dataclass
class StepLimits:
    """Limits the step's shell sets on itself (``ulimit``); None leaves the server's."""

    cpu_seconds: int | None = None
    open_files: int | None = None
    file_size_bytes: int | None = None


class RunContainment(Protocol):
    """What keeps a run's processes together: a cgroup (runs/cgroups.py) or the subreaper (runs/reaper.py)."""

    def join_commands(self) -> list[str]: ...
    def spawning(self) -> contextlib.AbstractContextManager[None]: ...
    def spawned(self, pid: int, pipes: tuple[int, ...] = ()) -> None: ...
    def waited(self, pid: int) -> None: ...
    def kill(self, timeout: float = 5.0) -> bool: ...


@dataclass
class HostStep:
    run_id: str
    step: Step
    env: dict[str, str]
    cwd: str
    deadline: float
    should_stop: Callable[[], str | None]  # returns "cancelled"/"timed_out"-style reason or None
    output: StepOutput
    limits: StepLimits = field(default_factory=StepLimits)
    on_spawn: Callable[[int], None] | None = None
    containment: RunContainment | None = None


def _prologue(limits: StepLimits, containment: RunContainment | None = None) -> list[str]:
    parts = containment.join_commands() if containment is not None else []
    if limits.cpu_seconds:
        parts.append(f"ulimit -t {int(limits.cpu_seconds)}")
    if limits.open_files:
        parts.append(f"ulimit -n {int(limits.open_files)}")
    if limits.file_size_bytes:
        parts.append(f"ulimit -f {max(1, int(limits.file_size_bytes) // 512)}")  # POSIX: 512-byte blocks
    return parts


def build_argv(script: str, limits: StepLimits, containment: RunContainment | None = None) -> list[str]:
    """``sh -c`` with the script as a positional argument, never interpolated.

    With limits, one shell sets them and then ``eval``s the script (taken from
    ``$1``, then shifted away so the script sees no arguments, as with plain
    ``sh -c``): one exec per step instead of two.
    """
    prologue = _prologue(limits, containment)
    if not prologue:
        return ["/bin/sh", "-c", script]
    wrapper = " && ".join(prologue) + ' || exit 126; __flwd_script=$1; shift; eval "$__flwd_script"'
    return ["/bin/sh", "-c", wrapper, "flwd-step", script]


def _kill_all(task: HostStep, pgid: int) -> None:
    _killpg(pgid, signal.SIGKILL)
    if task.containment is not None:
        task.containment.kill(timeout=0)


def _killpg(pgid: int, sig: int) -> bool:
    try:
        os.killpg(pgid, sig)
        return True
    except (ProcessLookupError, PermissionError):
        return False


def _wait_group_gone(pgid: int, timeout: float) -> None:
    """Killed processes take a moment to die and be reaped; return once none is left."""
    deadline = time.monotonic() + timeout
    while group_alive(pgid) and time.monotonic() < deadline:
        time.sleep(0.005)


def group_alive(pgid: int) -> bool:
    """True while a live (non-zombie) process is in the group.

    Orphaned members that were killed stay zombies until PID 1 reaps them,
    which some container inits do only now and then; they run nothing.
    """
    try:
        os.killpg(pgid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    with os.scandir("/proc") as entries:
        for entry in entries:
            if not entry.name.isdigit():
                continue
            try:
                with open(f"/proc/{entry.name}/stat", "rb") as fh:
                    fields = fh.read().rsplit(b")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == pgid and fields[0] not in (b"Z", b"X"):
                return True
    return False


def run_host_step(task: HostStep) -> StepOutcome:
    started = time.monotonic()
    limits = task.limits
    containment = task.containment
    with containment.spawning() if containment is not None else contextlib.nullcontext():
        proc = subprocess.Popen(
            build_argv(task.step.run or "", limits, containment),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=task.cwd,
            env=task.env,
            start_new_session=True,
            close_fds=True,
        )
        if containment is not None:
            containment.spawned(proc.pid, (proc.stdout.fileno(), proc.stderr.fileno()))  # type: ignore[union-attr]
    pgid = proc.pid
    if task.on_spawn:
        task.on_spawn(pgid)
    selector = selectors.DefaultSelector()
    for name, pipe in (("stdout", proc.stdout), ("stderr", proc.stderr)):
        assert pipe is not None
        os.set_blocking(pipe.fileno(), False)
        selector.register(pipe, selectors.EVENT_READ, name)
    output = task.output
    stopped: str | None = None
    kill_at: float | None = None
    exited_at: float | None = None

    try:
        while selector.get_map():
            now = time.monotonic()
            if stopped is None:
                stopped = task.should_stop() or ("timed_out" if time.time() >= task.deadline else None)
                if stopped is not None:
                    _killpg(pgid, signal.SIGTERM)
                    kill_at = now + KILL_GRACE
            if kill_at is not None and now >= kill_at:
                _kill_all(task, pgid)
                kill_at = None
            if exited_at is None and proc.poll() is not None:
                exited_at = now
            if exited_at is not None and now - exited_at > DRAIN_AFTER_EXIT:
                # The shell is gone but something it started still holds the pipes:
                # a step's processes do not outlive the step.
                _kill_all(task, pgid)
                if now - exited_at > DRAIN_AFTER_EXIT + 2:
                    break
            for key, _ in selector.select(timeout=0.1):
                try:
                    chunk = os.read(key.fileobj.fileno(), 65536)  # type: ignore[union-attr]
                except BlockingIOError:
                    continue
                if chunk:
                    output.feed(key.data, chunk)
                else:
                    output.end(key.data)
                    selector.unregister(key.fileobj)
    finally:
        for key in list(selector.get_map().values()):
            selector.unregister(key.fileobj)
        selector.close()
        code = proc.wait()
        if containment is not None:
            containment.waited(proc.pid)
        if _killpg(pgid, signal.SIGKILL):  # stragglers of a finished step, or the rest of a killed one
            _wait_group_gone(pgid, 2.0)
        if containment is not None:  # and whatever left the process group
            containment.kill()
        for pipe in (proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()
    duration = time.monotonic() - started
    exit_code = code if code >= 0 else 128 - code
    if stopped:
        status = stopped
    else:
        status = "succeeded" if code == 0 else "failed"
    return StepOutcome(exit_code, status, duration)
