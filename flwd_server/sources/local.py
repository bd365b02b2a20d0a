"""A source that is a folder on this machine; its revision is a digest of every file in it.

Steps read the folder through ``FLWD_SOURCE_DIR``, so the revision covers what
they can read there (``fingerprint.py``), not only the job files, and every
plan and run sees the folder as it is at that moment.  A snapshot first asks
the folder's inotify watch (``watch.py``): an empty queue means nothing
changed, and the last snapshot is returned after one ``read``.  Otherwise (or
at least every ``RECHECK_NS``, for changes inotify cannot report, such as
writes through a memory map) it walks the folder, stats every file (no file is
read unless its stat changed) and re-parses the job files only when the digest
moved.  A ``"plan": DIGEST`` submitted after any edit is refused, however soon
after the plan it comes.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

from ..errors import Unprocessable, UnsafeSource
from .base import Source, SourceSnapshot, scan_jobs
from .fingerprint import FolderFingerprint, FolderTooLarge
from .watch import FolderWatch

RECHECK_NS = 1_000_000_000


class LocalSource(Source):
    kind = "local"

    def __init__(self, name: str, spec: dict[str, Any], default_timeout: float = 3600) -> None:
        super().__init__(name, spec)
        path = Path(spec["path"]).expanduser()
        if not path.is_absolute():
            raise UnsafeSource(f"source {name!r}: path must be absolute, got {spec['path']!r}")
        if not path.is_dir():
            raise UnsafeSource(f"source {name!r}: path {spec['path']!r} does not exist or is not a folder")
        self.root = path.resolve()
        self.default_timeout = default_timeout
        self._cache: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._files = FolderFingerprint(self.root)
        self._watch = FolderWatch()
        self._walked_from = -RECHECK_NS  # monotonic ns at which the last walk began
        self._last: SourceSnapshot | None = None
        self._state: tuple[str, str] = ("", "")  # (problem or "", the digest or the problem's detail)
        self._scanned_from = -1  # monotonic ns at which the scan that made _last began

    def sync(self) -> SourceSnapshot:
        """Rescan now; a folder too large to cover is a 422 naming ``path`` (registration refuses it)."""
        snap = self.snapshot()
        if snap.revision is None and snap.errors and snap.errors[0]["field"] == "(source)":
            message = snap.errors[0]["message"]
            raise Unprocessable(f"source {self.name!r}: {message}", [{"field": "path", "message": message}])
        return snap

    def snapshot(self) -> SourceSnapshot:
        asked = time.monotonic_ns()
        with self._lock:
            if self._last is not None and self._scanned_from >= asked:
                return self._last  # a scan that began after this call: as current as a new one
            began = time.monotonic_ns()
            if self._last is not None and began - self._walked_from < RECHECK_NS and self._watch.quiet():
                self._scanned_from = began
                return self._last
            self._watch.arm()
            try:
                state = ("", self._files.digest(self._watch.add))
            except FolderTooLarge as exc:
                state = ("too-large", str(exc))
            except OSError as exc:  # the folder itself is gone or unreadable
                state = ("unreadable", exc.strerror or str(exc))
            if state[0] or self._files.hard_linked:
                self._watch.disarm()
            self._walked_from = began
            if self._last is None or state != self._state:
                self._last = self._scan(*state)
                self._state = state
            self._scanned_from = began
            return self._last

    def _scan(self, problem: str, detail: str) -> SourceSnapshot:
        if problem:
            if problem == "too-large":
                message = (
                    f"the folder has {detail}: too large for a local source, whose revision covers every file"
                    " a step can read; use a git source or a smaller folder"
                )
            else:
                message = f"the folder cannot be read: {detail}"
            error = {"path": "", "field": "(source)", "message": message}
            return SourceSnapshot(self.name, None, str(self.root), {}, (error,))
        revision = "local:" + detail[:16]
        snap = scan_jobs(self.name, self.root, revision, self.default_timeout, self._cache)
        return SourceSnapshot(self.name, revision, snap.root, snap.jobs, snap.errors)
