"""``limits.max_run_history``, kept promptly: prune as soon as a run ends.

Every run's end is a ``run.finished`` event, whatever ended it (the runner, a
cancel of a queued run, the lost-run sweep, a rejection at submit, another
process).  The process's event poller hands each new batch of events to
:meth:`Retention.on_events`; one prune is then queued to the writer (never
more than one at a time per process).  When nothing is due a prune is a
single index probe, so doing it after every run costs next to nothing, and
the database never holds more than ``max_run_history`` finished runs for
longer than a poll interval.  The runner's periodic housekeeping prunes too,
as a backstop.  A prune that left artifact files held by no run queues their
removal (store/artifacts.py) behind it.
"""

from __future__ import annotations

import threading

from ..events.hub import control_only
from ..models import Event, EventType
from .artifacts import BlobDir, anything_to_sweep, sweep_in
from .backend import Store


class Retention:
    def __init__(self, store: Store, max_history: int, blobs: BlobDir | None = None) -> None:
        self.store = store
        self.blobs = blobs
        self.max_history = max_history
        self._lock = threading.Lock()
        self._queued = False
        self.pruned = 0

    @control_only
    def on_events(self, events: list[Event]) -> None:
        if any(e.type == EventType.RUN_FINISHED.value for e in events):
            self.schedule()

    def schedule(self) -> None:
        """Queue one prune to the writer, unless one is already waiting there."""
        with self._lock:
            if self._queued:
                return
            self._queued = True

        def prune(conn) -> int:
            with self._lock:
                self._queued = False  # runs that end from now on need another look
            count = self.store.prune_in(conn, self.max_history)
            self.pruned += count
            if self.blobs is not None and anything_to_sweep(conn):
                # The files go after this transaction commits: in the next one, under the same write lock.
                self.store.write_later(lambda later: sweep_in(later, self.blobs))
            return count

        self.store.write_later(prune)
