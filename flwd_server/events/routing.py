"""New events to the streams whose filters they pass, at a cost per event, not per stream.

The broadcaster reads a batch of new events once, then hands each filtered
stream (grouped by equal filter) only what it wants.  Testing every event
against every filter would cost each event a Python call per stream, so the
filters are indexed instead: each one is filed under the values of its most
selective parameter (:meth:`EventFilter.index_keys`: its runs, else its
jobs, else its sources, else its types).  An event looks up its own run, job,
source and type (a few dict lookups, however many streams are open) and only
the filters found there test the rest of their parameters.

A run's job and source come from :class:`RunOrigins`, a bounded cache filled
by one query per batch for the runs it has not seen.
"""

from __future__ import annotations

from collections.abc import Iterable

from ..models import Event
from ..store import Store
from ..store.event_filter import GRANTED_KEY, EventFilter, event_source


class RunOrigins:
    """``run id -> (job, source)``, remembered for the last ``size`` runs (a run's job never changes)."""

    def __init__(self, store: Store, size: int = 20000) -> None:
        self.store = store
        self.size = size
        self._known: dict[str, tuple[str, str] | None] = {}

    def learn(self, run_ids: Iterable[str | None]) -> None:
        """Look up, in one query, the runs among ``run_ids`` not yet known (a pruned run is known as None)."""
        known = self._known
        missing = list({r for r in run_ids if r is not None and r not in known})
        if not missing:
            return
        found = self.store.run_origins(missing)
        if len(known) + len(missing) > self.size:
            for key in list(known)[: max(len(known) // 2, len(missing))]:  # the oldest half: dicts keep order
                known.pop(key, None)
        for run_id in missing:
            known[run_id] = found.get(run_id)

    def get(self, run_id: str | None) -> tuple[str, str] | None:
        return None if run_id is None else self._known.get(run_id)


def route(events: list[Event], filters: Iterable[EventFilter], origins: RunOrigins) -> dict[EventFilter, list[Event]]:
    """The events each filter passes, in order (a filter that passes none is absent)."""
    out: dict[EventFilter, list[Event]] = {}
    index: dict[tuple[str, str], list[EventFilter]] = {}
    needs_origin = False
    for event_filter in filters:
        if event_filter.everything:
            out[event_filter] = events
            continue
        for key in event_filter.index_keys():
            index.setdefault(key, []).append(event_filter)
        needs_origin = needs_origin or event_filter.needs_origin
    if not index:
        return out
    dimensions = {name for name, _ in index}
    by_run, by_job, by_source, by_type = (
        "run" in dimensions,
        "job" in dimensions,
        "source" in dimensions,
        "type" in dimensions,
    )
    if needs_origin:
        origins.learn(e.run_id for e in events)
    get = index.get
    for event in events:
        origin = origins.get(event.run_id) if needs_origin else None
        found: list[EventFilter] = []
        if by_run and event.run_id is not None:
            found += get(("run", event.run_id), ())
        if by_job and origin is not None:
            found += get(("job", origin[0]), ())
        if by_source:
            source = origin[1] if origin is not None else event_source(event)
            if source is not None:
                found += get(("source", source), ())
        if by_type:
            found += get(("type", event.type), ())
        found += get(GRANTED_KEY, ())
        for event_filter in found:  # each filter is filed under one parameter: found at most once per event
            if event_filter.matches(event, origin):
                out.setdefault(event_filter, []).append(event)
    return out
