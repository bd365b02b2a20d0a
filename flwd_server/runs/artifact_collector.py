"""Collecting a run's artifacts: the files its steps left in ``$FLWD_ARTIFACTS``, when the run ends.

The folder is read after every process of the run is gone, through directory
descriptors and ``O_NOFOLLOW``, so nothing outside it is ever opened: a symlink,
a FIFO, a socket or a device is refused, not followed or read.  Names become
relative POSIX paths in NFC; a name that is not UTF-8 or holds a control
character is refused.  ``limits.max_artifact_files`` and
``limits.max_artifact_bytes`` cap a run: the files that fit are kept, in path
order, and each one past the quota is refused.  Every refusal is an
``artifact.refused`` event naming the file and why (the first
``MAX_REFUSAL_EVENTS``; the rest are counted), and one ``artifacts.collected``
event sums up (none when the folder was empty): refusals never change how the run ended.  A name that holds
the value of a ``secret: true`` argument is refused, and shown masked.
"""

from __future__ import annotations

import hashlib
import logging
import os
import stat
import unicodedata
from collections.abc import Iterator
from pathlib import Path

from ..config import Settings
from ..errors import FlwdError
from ..models import EventType
from ..store import Store
from ..store.artifacts import MAX_PATH, BlobDir, Staged, record
from .capture import SecretMask
from .environment import artifacts_folder

log = logging.getLogger("flwd.artifacts")
MAX_DEPTH = 32
MAX_REFUSAL_EVENTS = 100
CHUNK = 1 << 20


class Refusal(Exception):
    """A file that is not collected, and why."""


def _component(name: str) -> str:
    """One name of a path, checked and in NFC (os.scandir gives undecodable bytes as surrogates)."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        raise Refusal("the name is not UTF-8") from None
    if any(ord(c) < 32 or 127 <= ord(c) < 160 for c in name):
        raise Refusal("the name holds a control character")
    return unicodedata.normalize("NFC", name)


def shown(parts: list[str]) -> str:
    """A path as events show it: undecodable bytes escaped, so the event is valid JSON text."""
    return "/".join(parts).encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _entries(fd: int, parts: list[str]) -> Iterator[tuple[list[str], int, os.DirEntry | None, str | None]]:
    """Every entry under the directory ``fd``, depth first in name order: ``(parts, dir fd, entry, why not)``."""
    with os.scandir(fd) as scan:
        entries = sorted(scan, key=lambda e: e.name)
    for entry in entries:
        here = [*parts, entry.name]
        if entry.is_symlink():
            yield here, fd, None, "a symbolic link (never followed)"
        elif entry.is_dir(follow_symlinks=False):
            if len(here) > MAX_DEPTH:
                yield here, fd, None, f"deeper than {MAX_DEPTH} folders"
                continue
            try:
                child = os.open(entry.name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
            except OSError as exc:
                yield here, fd, None, f"cannot be read: {exc.strerror}"
                continue
            try:
                yield from _entries(child, here)
            finally:
                os.close(child)
        elif entry.is_file(follow_symlinks=False):
            yield here, fd, entry, None
        else:
            yield here, fd, None, "not a regular file (a FIFO, socket or device)"


class Collector:
    """One run's collection: the quota spent so far, what was staged and what was refused."""

    def __init__(self, store: Store, settings: Settings, run_id: str, secrets: SecretMask | None = None) -> None:
        self.store = store
        self.secrets = secrets if secrets else None
        self.run_id = run_id
        self.blobs = BlobDir(settings.resolved_artifacts_dir)
        self.max_files = settings.limits.max_artifact_files
        self.max_bytes = settings.limits.max_artifact_bytes
        self.staged: list[Staged] = []
        self.paths: set[str] = set()
        self.bytes = 0
        self.refused = 0

    def refuse(self, parts: list[str], reason: str) -> None:
        self.refused += 1
        if self.refused <= MAX_REFUSAL_EVENTS:
            path = shown(parts)
            if self.secrets is not None:
                path = self.secrets.line(path.encode(), False).decode("utf-8", "replace")
            self.store.emit(self.run_id, EventType.ARTIFACT_REFUSED.value, {"path": path, "reason": reason})

    def collect(self, folder: Path) -> None:
        try:
            root = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        except FileNotFoundError:
            return  # removed by the job: nothing to collect
        except OSError as exc:
            self.refuse([], f"the artifacts folder cannot be read (a symbolic link?): {exc.strerror}")
            return
        try:
            for parts, dir_fd, entry, why in _entries(root, []):
                try:
                    if why is not None:
                        raise Refusal(why)
                    assert entry is not None
                    self.stage(parts, dir_fd, entry)
                except Refusal as refusal:
                    self.refuse(parts, str(refusal))
                except FlwdError as exc:  # the artifact directory refused a write (full, read-only)
                    self.refuse(parts, exc.detail)
                except OSError as exc:
                    self.refuse(parts, f"cannot be read: {exc.strerror or type(exc).__name__}")
            record(self.store, self.blobs, self.run_id, self.staged)
        finally:
            os.close(root)
            for item in self.staged:  # renamed by record(); left only if that failed
                item.temp.unlink(missing_ok=True)
        if self.staged or self.refused:  # a run that left nothing says nothing
            self.store.emit(
                self.run_id,
                EventType.ARTIFACTS_COLLECTED.value,
                {"files": len(self.staged), "bytes": self.bytes, "refused": self.refused},
            )

    def stage(self, parts: list[str], dir_fd: int, entry: os.DirEntry) -> None:
        """Copy one file into the artifact directory under a temporary name, hashing it on the way."""
        path = "/".join(_component(part) for part in parts)
        if len(path.encode()) > MAX_PATH:
            raise Refusal(f"the path is longer than {MAX_PATH} bytes")
        if self.secrets is not None and self.secrets.found_in(path.encode()):
            raise Refusal("the name holds the value of a secret argument")
        if path in self.paths:
            raise Refusal("another file has the same name in NFC")
        if len(self.staged) >= self.max_files:
            raise Refusal(f"over the quota of {self.max_files} files per run (limits.max_artifact_files)")
        try:
            fd = os.open(entry.name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=dir_fd)
        except OSError as exc:
            raise Refusal(f"cannot be read: {exc.strerror}") from None
        with os.fdopen(fd, "rb") as source:
            info = os.fstat(source.fileno())
            if not stat.S_ISREG(info.st_mode):
                raise Refusal("not a regular file")
            room = self.max_bytes - self.bytes
            if info.st_size > room:
                raise Refusal(f"over the quota of {self.max_bytes} bytes per run (limits.max_artifact_bytes)")
            digest = hashlib.sha256()
            size = 0
            target, temp = self.blobs.temp_file()
            try:
                with target:
                    while chunk := source.read(min(CHUNK, room - size + 1)):
                        size += len(chunk)
                        if size > room:
                            raise Refusal(f"over the quota of {self.max_bytes} bytes per run (grew while read)")
                        digest.update(chunk)
                        target.write(chunk)
                    target.flush()
                    os.fsync(target.fileno())
            except BaseException:
                temp.unlink(missing_ok=True)
                raise
        self.paths.add(path)
        self.bytes += size
        self.staged.append(Staged(path, size, digest.hexdigest(), temp))


def collect_artifacts(
    store: Store, settings: Settings, run_id: str, workdir: Path, secrets: SecretMask | None = None
) -> None:
    """Collect what the run left in ``$FLWD_ARTIFACTS``; never raises (a fault is logged and an event)."""
    collector = Collector(store, settings, run_id, secrets)
    try:
        collector.collect(artifacts_folder(workdir))
    except Exception as exc:
        log.exception("run %s: artifacts could not be collected", run_id, extra={"run_id": run_id})
        detail = getattr(exc, "detail", None) or type(exc).__name__
        store.emit(run_id, EventType.ARTIFACT_REFUSED.value, {"path": "", "reason": f"not collected: {detail}"})
