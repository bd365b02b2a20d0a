"""Name resolution across sources: ``name``, ``source:name`` or a separate source hint."""

from __future__ import annotations

import difflib
import threading
from collections.abc import Callable, Iterable

from .errors import AmbiguousJob, Conflict, JobNotFound, SourceNotFound, Unprocessable
from .models import Job
from .sources.base import Source, SourceSnapshot


class Catalog:
    """The sources a server or CLI knows, in registration order."""

    def __init__(self, sources: Iterable[Source] = (), before_read: Callable[[], None] | None = None) -> None:
        self._sources: dict[str, Source] = {}
        self._lock = threading.Lock()
        # Called before every lookup: the source registry reloads what other processes changed.
        self.before_read = before_read
        for source in sources:
            self.add(source)

    def add(self, source: Source) -> None:
        with self._lock:
            if source.name in self._sources:
                raise Conflict(f"a source named {source.name!r} already exists")
            self._sources[source.name] = source

    def replace_all(self, sources: Iterable[Source]) -> None:
        fresh = {s.name: s for s in sources}
        with self._lock:
            self._sources = fresh

    def remove(self, name: str) -> Source:
        with self._lock:
            try:
                return self._sources.pop(name)
            except KeyError:
                raise SourceNotFound(f"no source named {name!r}") from None

    def get(self, name: str) -> Source:
        if self.before_read is not None:
            self.before_read()
        try:
            return self._sources[name]
        except KeyError:
            known = ", ".join(self._sources) or "none"
            raise SourceNotFound(f"no source named {name!r} (known: {known})") from None

    def last_read(self, name: str) -> Source | None:
        """The source as last read, without reading again: for a caller that just did (one read per plan)."""
        return self._sources.get(name)

    def sources(self) -> list[Source]:
        if self.before_read is not None:
            self.before_read()
        return list(self._sources.values())

    def snapshots(self, source: str | None = None) -> list[SourceSnapshot]:
        chosen = [self.get(source)] if source else self.sources()
        return [s.snapshot() for s in chosen]

    def list_jobs(self, source: str | None = None) -> list[Job]:
        jobs: list[Job] = []
        for snap in self.snapshots(source):
            jobs.extend(snap.jobs[name] for name in sorted(snap.jobs))
        return jobs

    def resolve(self, name: str, source: str | None = None) -> Job:
        """Find one job; a name in several sources without a hint is AmbiguousJob."""
        if not isinstance(name, str) or not name:
            raise Unprocessable("job: expected a job name", [{"field": "job", "message": "expected a job name"}])
        if ":" in name:
            hinted, _, name = name.partition(":")
            if source and source != hinted:
                raise Unprocessable(
                    f"job {hinted}:{name} names source {hinted!r} but the request's source is {source!r}",
                    [{"field": "source", "message": f"conflicts with the hint in the job name ({hinted!r})"}],
                )
            source = hinted
        if source:
            snap = self.get(source).snapshot()
            job = snap.jobs.get(name)
            if job is None:
                raise JobNotFound(f"source {source!r} has no job {name!r}{self._suggest(name, snap.jobs)}")
            return job
        found = [snap.jobs[name] for snap in self.snapshots() if name in snap.jobs]
        if not found:
            every = {job.name: job for job in self.list_jobs()}
            raise JobNotFound(f"no source has a job named {name!r}{self._suggest(name, every)}")
        if len(found) > 1:
            raise AmbiguousJob(name, [job.qualified_name for job in found])
        return found[0]

    @staticmethod
    def _suggest(name: str, names: Iterable[str]) -> str:
        close = difflib.get_close_matches(name, list(names), n=3)
        return f" (did you mean {', '.join(close)}?)" if close else ""
