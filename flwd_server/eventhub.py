"""One poller per process that fans new events out to every waiting stream.

Instead of one query per open stream, a single thread watches the database
(``PRAGMA data_version`` changes on any other connection's commit, so an idle
server runs no SELECT on the events table) and keeps the newest events in
memory.  Streams read from that buffer and wait on one condition; a stream
that fell behind the buffer reads the database directly, then catches up.
Local commits wake the poller at once, so latency is not the poll interval.
"""

from __future__ import annotations

import bisect
import logging
import threading
from collections.abc import Callable

from .forksafe import reset_after_fork
from .models import Event
from .store import Store
from .wakeups import Wakeups

log = logging.getLogger("flwd.events")


class EventHub:
    def __init__(self, store: Store, poll_interval: float = 0.02, max_events: int = 20000, max_bytes: int = 32 * 1024 * 1024) -> None:
        self.store = store
        self.poll_interval = poll_interval
        self.max_events = max_events
        self.max_bytes = max_bytes
        self._listeners: list[Callable[[list[Event]], None]] = []
        self.wakeups = Wakeups(store.path)
        self._reset()
        store.add_commit_listener(self._after_commit)
        reset_after_fork(self, "_reset")

    def _reset(self) -> None:
        self._cond = threading.Condition()
        self._events: list[Event] = []
        self._ids: list[int] = []
        self._bytes = 0
        self._floor = 0  # every event with floor < id <= last_id is in the buffer
        self._last_id = 0
        self._thread: threading.Thread | None = None
        self._closed = False
        self.polls = 0
        self.queries = 0

    def add_listener(self, listener: Callable[[list[Event]], None]) -> None:
        """Called with each new batch of events (on the poller thread; keep it quick)."""
        self._listeners.append(listener)

    def start(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            return
        with self._cond:
            if self._thread is not None and self._thread.is_alive():
                return
            last = self.store.last_event_id()
            self._floor = self._last_id = last
            self._thread = threading.Thread(target=self._poll_loop, name="flwd-event-poller", daemon=True)
            self._thread.start()

    def close(self) -> None:
        self._closed = True
        self.wakeups.wake_self()
        with self._cond:
            self._cond.notify_all()

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def last_id(self) -> int:
        return self._last_id

    def wake(self) -> None:
        self.wakeups.wake_self()

    def _after_commit(self) -> None:
        """This process wrote: look now, and tell the other processes on this host to look too."""
        self.wakeups.wake_self()
        self.wakeups.wake_peers()

    def _poll_loop(self) -> None:
        conn = self.store.connect()
        version = None
        try:
            while not self._closed:
                self.wakeups.wait(self.poll_interval)
                self.polls += 1
                try:
                    current = conn.execute("PRAGMA data_version").fetchone()[0]
                    if current == version:
                        continue
                    version = current
                    self._fetch(conn)
                except Exception:  # never let the poller die: streams depend on it
                    log.exception("event poller failed; retrying")
                    version = None
        finally:
            conn.close()
            self.wakeups.close()

    def _fetch(self, conn) -> None:
        while True:
            self.queries += 1
            fresh = self.store.events_after(self._last_id, None, 5000, conn=conn)
            if not fresh:
                return
            with self._cond:
                for event in fresh:
                    self._events.append(event)
                    self._ids.append(event.id)
                    self._bytes += len(event.raw) + 64
                self._last_id = fresh[-1].id
                self._trim()
                self._cond.notify_all()
            for listener in self._listeners:
                try:
                    listener(fresh)
                except Exception:
                    log.exception("event listener failed")
            if len(fresh) < 5000:
                return

    def _trim(self) -> None:
        drop = 0
        while drop < len(self._events) - 1 and (len(self._events) - drop > self.max_events or self._bytes > self.max_bytes):
            self._bytes -= len(self._events[drop].raw) + 64
            drop += 1
        if drop:
            self._floor = self._ids[drop - 1]
            del self._events[:drop]
            del self._ids[:drop]

    def read(self, after: int, run_id: str | None = None, limit: int = 500) -> tuple[list[Event], int]:
        """Events with ``id > after`` (of one run, if given) and the position read up to."""
        with self._cond:
            last = self._last_id
            if after >= last:
                return [], after
            if after >= self._floor:
                start = bisect.bisect_right(self._ids, after)
                if run_id is None:
                    chunk = self._events[start : start + limit]
                    return chunk, chunk[-1].id
                out = []
                position = last
                for event in self._events[start:]:
                    if event.run_id == run_id:
                        out.append(event)
                        if len(out) >= limit:
                            position = event.id
                            break
                return out, position
        # Behind the buffer: read history from the database.  Everything up to
        # ``last`` was committed before this query starts, so it is all visible.
        events = self.store.events_after(after, run_id, limit)
        if len(events) >= limit:
            return events, events[-1].id
        return events, max(last, events[-1].id if events else after)

    def wait(self, after: int, timeout: float) -> bool:
        """Block until an event newer than ``after`` exists; False on timeout or close."""
        with self._cond:
            return self._cond.wait_for(lambda: self._last_id > after or self._closed, timeout) and not self._closed
