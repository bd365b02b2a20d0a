"""The small interface every kind of source implements, and the job-folder scan they share."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import InvalidJob
from ..jobs.files import parse_job
from ..models import Job
from .fingerprint import settled, stat_key

JOB_SUFFIXES = (".yaml", ".yml")
MAX_JOB_FILES = 20000


@dataclass(frozen=True)
class SourceSnapshot:
    """The jobs of one source at one revision; immutable, so a run can hold it."""

    name: str
    revision: str | None
    root: str | None
    jobs: dict[str, Job] = field(default_factory=dict)
    errors: tuple[dict[str, Any], ...] = ()


class Source:
    """Base class: subclasses set ``kind`` and implement ``snapshot`` (and ``sync`` if remote)."""

    kind = "abstract"

    def __init__(self, name: str, spec: dict[str, Any]) -> None:
        self.name = name
        self.spec = dict(spec)

    def snapshot(self) -> SourceSnapshot:
        raise NotImplementedError  # pragma: no cover - every kind implements it

    def load_state(self, state: dict[str, Any]) -> None:
        """Take the state another process stored (e.g. a git source's current commit)."""

    def sync(self) -> SourceSnapshot:
        """Fetch from upstream; local folders are always current."""
        return self.snapshot()

    def checkout_for(self, revision: str | None) -> str | None:
        """A directory holding the source at ``revision`` (for FLWD_SOURCE_DIR), if any."""
        return self.snapshot().root

    def describe(self) -> dict[str, Any]:
        snap = self.snapshot()
        return {
            **self.spec,
            "type": self.kind,
            "name": self.name,
            "revision": snap.revision,
            "jobs": sorted(snap.jobs),
            "errors": list(snap.errors),
        }


def _inside(path: Path, root: Path) -> bool:
    try:
        path.relative_to(root)
    except ValueError:
        return False
    return True


def scan_jobs(
    source: str,
    root: str | os.PathLike[str],
    revision: str | None,
    default_timeout: float,
    cache: dict[str, tuple[tuple[int, ...], Any]] | None = None,
) -> SourceSnapshot:
    """Parse every job file under ``root/jobs``; a broken file never hides the others.

    ``cache`` maps a relative path to ``(stat key, Job | error)`` so a rescan
    re-parses only what changed: the key has ``ctime``, which a same-size rewrite
    that restores ``mtime`` still changes, and a file written within a timestamp
    tick of the scan is not cached at all (``fingerprint.settled``).  Files whose real path leaves the source
    root (``..`` or a symlink) are ignored with an error each; a ``jobs`` folder
    that does is one error, and nothing under it is read.
    """
    root_path = Path(root).resolve()
    started = time.time_ns()
    jobs_dir = root_path / "jobs"
    errors: list[dict[str, Any]] = []
    jobs: dict[str, Job] = {}
    if not jobs_dir.is_dir():
        errors.append({"path": "jobs/", "field": "(folder)", "message": "the source has no jobs/ folder"})
        return SourceSnapshot(source, revision, str(root_path), jobs, tuple(errors))
    if not _inside(jobs_dir.resolve(), root_path):
        # os.walk follows its top folder when it is a link, whatever followlinks says: check it first
        message = "is a link that resolves outside the source root; nothing under it is read"
        errors.append({"path": "jobs", "field": "(folder)", "message": message})
        return SourceSnapshot(source, revision, str(root_path), jobs, tuple(errors))
    seen = set()
    count = 0
    for dirpath, dirnames, filenames in os.walk(jobs_dir, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for dirname in list(dirnames):
            if os.path.islink(os.path.join(dirpath, dirname)):
                dirnames.remove(dirname)
                rel = os.path.relpath(os.path.join(dirpath, dirname), root_path)
                errors.append({"path": rel, "field": "(file)", "message": "symlinked folders are not followed"})
        for filename in sorted(filenames):
            if not filename.endswith(JOB_SUFFIXES) or filename.startswith("."):
                continue
            count += 1
            full = Path(dirpath) / filename
            rel = str(full.relative_to(root_path))
            seen.add(rel)
            if count > MAX_JOB_FILES:
                errors.append(
                    {
                        "path": rel,
                        "field": "(file)",
                        "message": f"more than {MAX_JOB_FILES} job files; the rest are ignored",
                    }
                )
                break
            real = full.resolve()
            if not _inside(real, root_path):
                errors.append({"path": rel, "field": "(file)", "message": "resolves outside the source root; ignored"})
                continue
            try:
                stat = real.stat()
            except OSError as exc:
                errors.append({"path": rel, "field": "(file)", "message": f"cannot read: {exc.strerror}"})
                continue
            key = stat_key(stat)
            cached = cache.get(rel) if cache is not None else None
            if cached and cached[0] == key:
                parsed = cached[1]
            else:
                try:
                    parsed = parse_job(real.read_bytes(), source, rel, revision, default_timeout)
                except InvalidJob as exc:
                    parsed = exc
                except OSError as exc:
                    parsed = InvalidJob(rel, [{"field": "(file)", "message": f"cannot read: {exc.strerror}"}])
                if cache is not None and settled(stat, started):
                    cache[rel] = (key, parsed)
                elif cache is not None:
                    cache.pop(rel, None)
            if isinstance(parsed, InvalidJob):
                errors.extend({"path": rel, **item} for item in parsed.errors)
                continue
            if parsed.revision != revision:
                parsed = Job(**{**parsed.__dict__, "revision": revision})
            if parsed.name in jobs:
                errors.append(
                    {
                        "path": rel,
                        "field": "name",
                        "message": f"job {parsed.name!r} is already defined in {jobs[parsed.name].path}",
                    }
                )
                continue
            jobs[parsed.name] = parsed
    if cache is not None:
        for stale in set(cache) - seen:
            del cache[stale]
    return SourceSnapshot(source, revision, str(root_path), jobs, tuple(errors))
