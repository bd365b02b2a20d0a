"""A source that is a folder on this machine; its revision is a digest of its job files.

The folder is rescanned at most once every ``RESCAN_INTERVAL`` seconds (and at
once on ``sync``): planning a run must not stat every job file of a big
source, and an edit still shows within a second.
"""

from __future__ import annotations

import hashlib
import threading
import time
from pathlib import Path
from typing import Any

from ..errors import UnsafeSource
from .base import Source, SourceSnapshot, scan_jobs

RESCAN_INTERVAL = 1.0


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
        self._last: SourceSnapshot | None = None
        self._scanned_at = 0.0

    def sync(self) -> SourceSnapshot:
        return self.snapshot(force=True)

    def snapshot(self, force: bool = False) -> SourceSnapshot:
        last = self._last
        if last is not None and not force and time.monotonic() - self._scanned_at < RESCAN_INTERVAL:
            return last
        with self._lock:
            snap = scan_jobs(self.name, self.root, None, self.default_timeout, self._cache)
            self._scanned_at = time.monotonic()
        digest = hashlib.sha256()
        for name in sorted(snap.jobs):
            digest.update(f"{name}\0{snap.jobs[name].file_digest}\0".encode())
        revision = "local:" + digest.hexdigest()[:16]
        last = self._last
        if last is not None and last.revision == revision and last.errors == snap.errors:
            return last
        jobs = {name: job.__class__(**{**job.__dict__, "revision": revision}) for name, job in snap.jobs.items()}
        self._last = SourceSnapshot(self.name, revision, snap.root, jobs, snap.errors)
        return self._last
