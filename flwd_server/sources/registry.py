"""Which sources exist, for every worker process: add, remove, sync, and keep the catalog current.

The database is the truth (``records.py``); each process mirrors it into its
:class:`~flwd_server.catalog.Catalog`.  Before the catalog answers, it calls
:meth:`SourceRegistry.refresh`, which reads one counter and rebuilds the
mirror only when another process (or thread) changed something - so a source
added through one gunicorn worker resolves at once through the others.

Changes to one source happen under its file lock (``locking.py``), across
threads and processes: two syncs of one source run one after the other, a
removal waits for a running sync, and a registration never clones over a
source that just appeared.

Three origins: ``bundled`` (the example jobs; not in the database, never
removable), ``config`` (the server config's ``sources:`` list, written to the
database at start; removable only by editing the config) and ``api`` (added
over HTTP or with ``flwd :sources add``).
"""

from __future__ import annotations

import json
import logging
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..config import Settings, validate_source_spec
from ..errors import ConfigError, Conflict, FlwdError, SourceError, SourceNotFound, StorageError, Unprocessable
from ..logs import redact_url
from ..models import EventType, iso
from ..store import Store
from .base import Source, SourceSnapshot
from .locking import source_lock
from .records import SourceRecord, SourceRecords

log = logging.getLogger("flwd.sources")
SPEC_FIELDS = ("type", "name", "path", "url", "ref")


class UnavailableSource(Source):
    """Stands in for a registered source that cannot be built here (e.g. its folder is gone)."""

    def __init__(self, name: str, spec: dict[str, Any], problem: str) -> None:
        super().__init__(name, spec)
        self.kind = str(spec.get("type", "unknown"))
        self.problem = problem

    def snapshot(self) -> SourceSnapshot:
        error = {"path": "", "field": "(source)", "message": self.problem}
        return SourceSnapshot(self.name, None, None, {}, (error,))

    def sync(self) -> SourceSnapshot:
        raise SourceError(f"source {self.name!r} cannot be used: {self.problem}")

    def checkout_for(self, revision: str | None) -> str | None:
        return None


def parse_spec(body: dict[str, Any]) -> dict[str, Any]:
    """Check a source object's shape (POST /sources, the CLI); 422 naming each bad field."""
    try:
        return validate_source_spec(body, key="source")
    except ConfigError as exc:
        field = exc.key.removeprefix("source").lstrip(".") or "type"
        message = exc.detail.split(": ", 1)[1] if ": " in exc.detail else exc.detail
        raise Unprocessable(f"invalid source: {field}: {message}", [{"field": field, "message": message}]) from None


class SourceRegistry:
    def __init__(
        self,
        store: Store,
        settings: Settings,
        catalog: Any,
        make_source: Callable[[dict[str, Any]], Source],
        bundled: list[Source] | None = None,
    ) -> None:
        self.store = store
        self.settings = settings
        self.catalog = catalog
        self.make_source = make_source
        self.bundled = list(bundled or [])
        self.records = SourceRecords(store)
        self._version: int | None = None
        self._built: dict[str, tuple[str, Source]] = {}
        self._lock = threading.Lock()

    @property
    def data_dir(self) -> Path:
        return self.settings.resolved_data_dir

    @property
    def lock_timeout(self) -> float:
        return self.settings.git.timeout * 3 + 30

    # -- the per-process mirror ------------------------------------------------------

    def refresh(self, force: bool = False) -> None:
        """Bring the catalog up to date with the database (one cheap read when nothing changed)."""
        try:
            version = self.records.version()
            if version == self._version and not force:
                return
            with self._lock:
                if version == self._version and not force:
                    return
                rows = self.records.all()
                sources = list(self.bundled)
                built: dict[str, tuple[str, Source]] = {}
                for row in rows:
                    key = json.dumps(row.spec, sort_keys=True)
                    previous = self._built.get(row.name)
                    source = previous[1] if previous and previous[0] == key else self._build(row)
                    source.load_state(row.state)
                    built[row.name] = (key, source)
                    sources.append(source)
                self._built = built
                self.catalog.replace_all(sources)
                self._version = version
        except (*self.store.errors, StorageError) as exc:  # keep serving what we know; the next call tries again
            log.warning("cannot read the registered sources: %s", exc)

    def _build(self, row: SourceRecord) -> Source:
        try:
            return self.make_source(row.spec)
        except FlwdError as exc:
            log.warning("source %s cannot be used: %s", row.name, exc.detail)
            return UnavailableSource(row.name, row.spec, exc.detail)

    # -- reading -----------------------------------------------------------------------

    def origin(self, name: str) -> str:
        if any(s.name == name for s in self.bundled):
            return "bundled"
        record = self.records.get(name)
        return record.origin if record else "api"

    def removable(self, name: str, origin: str) -> bool:
        return origin == "api" or (origin == "config" and name not in self._configured_names())

    def _configured_names(self) -> set[str]:
        return {spec["name"] for spec in self.settings.sources}

    def describe(self, source: Source, record: SourceRecord | None = None) -> dict[str, Any]:
        """The API view of one source: where it comes from, its revision, jobs and file errors."""
        snap = source.snapshot()
        if record is None and source not in self.bundled:
            record = self.records.get(source.name)
        state = record.state if record else {}
        origin = "bundled" if source in self.bundled else (record.origin if record else "api")
        out: dict[str, Any] = {"name": source.name, "type": source.kind, "origin": origin}
        for key in ("path", "url", "ref"):
            if key in source.spec:
                out[key] = redact_url(source.spec[key]) if key == "url" else source.spec[key]
        if source.kind == "git":
            out.setdefault("ref", None)
        out.update(
            {
                "revision": snap.revision,
                "synced_at": iso(state.get("synced_at")),
                "last_error": state.get("last_error"),
                "removable": self.removable(source.name, origin),
                "jobs": [snap.jobs[name].summary() for name in sorted(snap.jobs)],
                "errors": list(snap.errors),
            }
        )
        return out

    def describe_all(self) -> list[dict[str, Any]]:
        self.refresh()
        records = {r.name: r for r in self.records.all()}
        return [self.describe(s, records.get(s.name)) for s in self.catalog.sources()]

    def describe_one(self, name: str) -> dict[str, Any]:
        self.refresh()
        return self.describe(self.catalog.get(name))

    # -- changing ------------------------------------------------------------------------

    def add(self, body: dict[str, Any], subject: str = "system", origin: str = "api") -> dict[str, Any]:
        """Register a source: validate, fetch or scan it once, then store it.  Nothing stays on failure."""
        spec = parse_spec(body)
        name = spec["name"]
        self._require_free(name)
        source = self.make_source(spec)  # kind checks: URL, ref, path - before anything touches disk
        with source_lock(self.data_dir, name, self.lock_timeout):
            self._require_free(name)
            self._wipe(name)  # leftovers of an earlier source of that name
            try:
                snap = source.sync()
            except StorageError:  # our disk, not the source: a 503 as it is, not a 422 about the source
                self._wipe(name)
                raise
            except FlwdError as exc:
                self._wipe(name)
                field = exc.extra.get("field") or next((k for k in ("url", "path", "ref") if k in spec), "name")
                log.warning("source %s was not added: %s", name, exc.detail)
                raise Unprocessable(
                    f"source {name!r} was not added: {exc.detail}", [{"field": field, "message": exc.detail}]
                ) from None
            except BaseException:
                self._wipe(name)
                raise
            state = self._synced_state({"origin": origin}, snap)
            try:
                self.records.insert(name, spec, state)
            except BaseException:
                self._wipe(name)
                raise
        source.load_state(state)
        self._emit_synced(source, snap, None, subject)
        log.info(
            "source %s added by %s (%s)",
            name,
            subject,
            source.kind,
            extra={"event": "source.added", "source": name, "subject": subject},
        )
        self.refresh()
        return self.describe(self.catalog.get(name))

    def _require_free(self, name: str) -> None:
        if any(s.name == name for s in self.bundled):
            raise Conflict(f"{name!r} is the name of the bundled example source; choose another name")
        if self.records.get(name) is not None:
            raise Conflict(f"a source named {name!r} already exists; remove it first or choose another name")

    def remove(self, name: str, subject: str = "system") -> None:
        self.refresh()
        origin = self.origin(name)
        if origin == "bundled":
            raise Conflict(
                f"{name!r} is the bundled example source; turn it off with 'bundled_jobs: false' in the config"
            )
        if self.records.get(name) is None:
            raise SourceNotFound(f"no source named {name!r}")
        if not self.removable(name, origin):
            raise Conflict(
                f"source {name!r} is defined in the server's config file; remove it there and restart the server"
            )
        with source_lock(self.data_dir, name, self.lock_timeout):
            if not self.records.delete(name):
                raise SourceNotFound(f"no source named {name!r}")
            self._wipe(name)
        log.info(
            "source %s removed by %s",
            name,
            subject,
            extra={"event": "source.removed", "source": name, "subject": subject},
        )
        self.refresh()

    def sync(self, name: str, subject: str = "system") -> dict[str, Any]:
        """Fetch (git) or rescan (local) one source; a failure keeps the last good revision serving.

        Returns ``{"source": ..., "previous_revision": ..., "changed": ...}``.
        """
        self.refresh()
        source = self.catalog.get(name)
        if source in self.bundled:
            snap = source.sync()
            self._emit_synced(source, snap, snap.revision, subject)
            return {"source": self.describe(source), "previous_revision": snap.revision, "changed": False}
        with source_lock(self.data_dir, name, self.lock_timeout):
            record = self.records.get(name)
            if record is None:
                raise SourceNotFound(f"no source named {name!r}")
            source.load_state(record.state)
            previous = record.state.get("revision")
            try:
                snap = source.sync()
            except FlwdError as exc:
                state = {**record.state, "last_error": exc.detail, "failed_at": time.time()}
                source.load_state(state)
                self.records.update_state(name, state)
                self._emit_failed(source, exc.detail, previous, subject)
                raise
            except Exception as exc:
                detail = f"source {name!r}: sync failed: {type(exc).__name__}"
                log.exception("source %s: sync failed", name)
                state = {**record.state, "last_error": detail, "failed_at": time.time()}
                source.load_state(state)
                self.records.update_state(name, state)
                self._emit_failed(source, detail, previous, subject)
                raise SourceError(detail) from None
            state = self._synced_state(record.state, snap)
            source.load_state(state)
            self.records.update_state(name, state)
            prune = getattr(source, "prune", None)
            if prune is not None:
                keep = {r for r in (snap.revision, previous) if r} | self.records.active_revisions(name)
                prune(keep)
        self._emit_synced(source, snap, previous, subject)
        self.refresh()
        return {
            "source": self.describe(self.catalog.get(name)),
            "previous_revision": previous,
            "changed": snap.revision != previous,
        }

    def register_configured(self, *, sync_new: bool = False, sync_all: bool = False, prune: bool = False) -> None:
        """Write the config file's sources to the database (start-up); a bad one is a ConfigError.

        ``sync_new`` fetches git sources that never synced; ``sync_all`` fetches
        every one (the server does at start); ``prune`` drops sources an
        earlier config defined and this one no longer does.
        """
        bundled = {s.name for s in self.bundled}
        to_sync = []
        for index, spec in enumerate(self.settings.sources):
            name = spec["name"]
            key = f"sources[{index}]"
            if name in bundled:
                raise ConfigError(f"{key}.name", f"{name!r} is the bundled example source's name")
            try:
                self.make_source(spec)
            except FlwdError as exc:
                raise ConfigError(key, exc.detail) from None
            record = self.records.get(name)
            if record is None or record.spec != spec or record.origin != "config":
                with source_lock(self.data_dir, name, self.lock_timeout):
                    if record is not None and record.spec != spec:
                        self._wipe(name)
                    if record is not None and record.origin != "config":
                        log.warning("source %s from the config file replaces the one registered over the API", name)
                    self.records.upsert(name, spec, {"origin": "config"})
                record = self.records.get(name)
            never_synced = record is None or not record.state.get("revision")
            if spec["type"] != "local" and (sync_all or (sync_new and never_synced)):
                to_sync.append(name)
        if prune:
            configured = self._configured_names()
            for record in self.records.all():
                if record.origin == "config" and record.name not in configured:
                    with source_lock(self.data_dir, record.name, self.lock_timeout):
                        self.records.delete(record.name)
                        self._wipe(record.name)
                    log.info("source %s is no longer in the config file: removed", record.name)
        self.refresh(force=True)
        for name in to_sync:
            try:
                self.sync(name, subject="config")
            except FlwdError as exc:
                log.warning("source %s from the config file did not sync: %s", name, exc.detail)

    # -- helpers -------------------------------------------------------------------------------

    def _synced_state(self, state: dict[str, Any], snap: SourceSnapshot) -> dict[str, Any]:
        return {**state, "revision": snap.revision, "synced_at": time.time(), "last_error": None, "failed_at": None}

    def _wipe(self, name: str) -> None:
        """Remove a source's files, an add-on's unpacked digests too (never the lock file, which others may be
        waiting on)."""
        for path in (self.data_dir / "sources" / name, self.data_dir / "addons" / name):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)

    def _emit_synced(self, source: Source, snap: SourceSnapshot, previous: str | None, subject: str) -> None:
        data = {
            "source": source.name,
            "type": source.kind,
            "revision": snap.revision,
            "previous_revision": previous,
            "changed": snap.revision != previous,
            "jobs": sorted(snap.jobs),
            "errors": len(snap.errors),
            "by": subject,
        }
        self.store.emit(None, EventType.SOURCE_SYNCED.value, data)
        self.store.flush()  # a client reading /events after the sync's answer must find it
        log.info(
            "source %s synced at %s (%d jobs, %d file errors)",
            source.name,
            snap.revision,
            len(snap.jobs),
            len(snap.errors),
            extra={"event": "source.synced", **data, "jobs": len(snap.jobs)},
        )

    def _emit_failed(self, source: Source, detail: str, revision: str | None, subject: str) -> None:
        data = {"source": source.name, "type": source.kind, "error": detail, "revision": revision, "by": subject}
        self.store.emit(None, EventType.SOURCE_FAILED.value, data)
        self.store.flush()
        log.warning(
            "source %s failed to sync (still serving %s): %s",
            source.name,
            revision,
            detail,
            extra={"event": "source.failed", **data},
        )
