"""A run's directories, kept for the next run: its work dir and its outputs dir.

Every run gets a work dir (its steps' cwd, ``HOME`` and ``$FLWD_WORKDIR``) holding an
empty ``artifacts`` folder (``$FLWD_ARTIFACTS``), and beside it an outputs dir for its
steps' ``$FLWD_OUTPUT`` files (:mod:`.outputs`).  Making three directories and a file
and removing both trees cost a trivial run about 1.5 ms of CPU on ext4, more than
starting its shell.  So a process keeps the directories of a finished run that left
them exactly as it got them, and renames them to the next run's names: four renames
instead of three ``mkdir``, a create and two tree walks.

A pair is kept only when nothing can still write into it (the run's cgroup was killed
and found empty) and a look shows nothing of the run: the work dir private (0700) and
holding only the empty ``artifacts`` folder, the outputs dir holding only its step
files, emptied.  Anything else is removed as before.  Kept pairs are named after their
process (``.idle-PID.STARTTIME.N``), so a starting server removes those of a process
that is gone.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import stat
import threading
from dataclasses import dataclass
from pathlib import Path

from ..errors import disk_error
from .cgroups import process_start
from .environment import ARTIFACTS_FOLDER, make_workdir, remove_workdir

log = logging.getLogger("flwd.runner")

IDLE_PREFIX = ".idle-"
OUTPUTS_SUFFIX = ".outputs"  # the outputs dir: beside the work dir, not in it (a step's HOME is its own)
STEP_FILE = re.compile(r"step-[0-9]+")
PRIVATE = 0o700


def outputs_dir(workdir: Path) -> Path:
    return workdir.with_name(workdir.name + OUTPUTS_SUFFIX)


@dataclass
class RunDirs:
    """A run's directories while it executes."""

    workdir: Path
    outputs: Path


class WorkDirPool:
    """One process's run directories under ``root`` (``DATA_DIR/work``), reused when a run left them clean."""

    def __init__(self, root: Path) -> None:
        self.root = root
        pid = os.getpid()
        self.tag = f"{pid}.{process_start(pid)}"
        self.idle: list[str] = []
        self.made = 0
        self.closed = False
        self._lock = threading.Lock()

    def acquire(self, run_id: str) -> RunDirs:
        """The run's work dir (with its ``artifacts`` folder) and outputs dir, empty and private."""
        workdir = self.root / run_id
        dirs = RunDirs(workdir, outputs_dir(workdir))
        with self._lock:
            slot = self.idle.pop() if self.idle else None
        if slot is not None:
            try:
                os.rename(self.root / (slot + OUTPUTS_SUFFIX), dirs.outputs)
                os.rename(self.root / slot, workdir)
                return dirs
            except OSError:  # a kept pair that is gone or cannot move: make new ones (and say why if that fails)
                _remove(RunDirs(self.root / slot, self.root / (slot + OUTPUTS_SUFFIX)))
                _remove(dirs)
        make_workdir(self.root, run_id)
        try:
            os.mkdir(dirs.outputs, PRIVATE)
        except OSError as exc:
            remove_workdir(workdir)
            raise disk_error("could not create the run's outputs dir", dirs.outputs, exc) from None
        return dirs

    def release(self, dirs: RunDirs, reusable: bool) -> None:
        """The run is over: keep its directories for the next run if ``reusable`` and clean, else remove them."""
        if reusable and clean(dirs):
            with self._lock:
                self.made += 1
                slot = f"{IDLE_PREFIX}{self.tag}.{self.made}"
            try:
                os.rename(dirs.outputs, self.root / (slot + OUTPUTS_SUFFIX))
                os.rename(dirs.workdir, self.root / slot)
            except OSError:
                _remove(RunDirs(self.root / slot, self.root / (slot + OUTPUTS_SUFFIX)))
            else:
                with self._lock:
                    if not self.closed:  # a run that ends after close() keeps nothing
                        self.idle.append(slot)
                        return
                _remove(RunDirs(self.root / slot, self.root / (slot + OUTPUTS_SUFFIX)))
                return
        _remove(dirs)

    def close(self) -> None:
        with self._lock:
            slots, self.idle, self.closed = self.idle, [], True
        for slot in slots:
            _remove(RunDirs(self.root / slot, self.root / (slot + OUTPUTS_SUFFIX)))

    def sweep(self) -> list[str]:
        """Remove the kept directories of processes that are gone (a killed server's); the names removed."""
        swept = []
        try:
            entries = [e.name for e in os.scandir(self.root) if e.name.startswith(IDLE_PREFIX)]
        except OSError:
            return swept
        for name in entries:
            pid, _, rest = name[len(IDLE_PREFIX) :].partition(".")
            start = rest.split(".", 1)[0]
            if pid.isdigit() and process_start(int(pid)) == start:
                continue  # a live process's, ours or another worker's
            path = self.root / name
            with contextlib.suppress(OSError):
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    path.unlink()
            swept.append(name)
        return swept


def _private_dir(info: os.stat_result) -> bool:
    return stat.S_ISDIR(info.st_mode) and stat.S_IMODE(info.st_mode) == PRIVATE and info.st_uid == os.geteuid()


def clean(dirs: RunDirs) -> bool:
    """Whether the run left its directories as it got them; empties its step files (so no output lingers)."""
    try:
        if not _private_dir(os.lstat(dirs.workdir)) or not _private_dir(os.lstat(dirs.outputs)):
            return False
        with os.scandir(dirs.workdir) as entries:
            if [e.name for e in entries] != [ARTIFACTS_FOLDER]:
                return False
        artifacts = dirs.workdir / ARTIFACTS_FOLDER
        if not _private_dir(os.lstat(artifacts)):
            return False
        with os.scandir(artifacts) as entries:
            if next(entries, None) is not None:
                return False
        with os.scandir(dirs.outputs) as entries:
            files = list(entries)
        for entry in files:
            info = entry.stat(follow_symlinks=False)
            if not STEP_FILE.fullmatch(entry.name) or not stat.S_ISREG(info.st_mode):
                return False
            if info.st_nlink != 1 or stat.S_IMODE(info.st_mode) != 0o600:
                os.unlink(entry.path)  # linked elsewhere, or opened up for a container: the next run makes its own
            elif info.st_size:
                os.truncate(entry.path, 0)
    except OSError:
        return False
    return True


def _remove(dirs: RunDirs) -> None:
    remove_workdir(dirs.workdir)
    shutil.rmtree(dirs.outputs, ignore_errors=True)
