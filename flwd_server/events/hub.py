"""One poller per process that fans new events out to every waiting stream.

Instead of one query per open stream, a single thread watches the database
and keeps the newest events in memory.  What it waits on is the store's
(``Store.watch``): with SQLite, ``PRAGMA data_version`` changes on any other
connection's commit (so an idle server runs no SELECT on the events table),
and local commits and other processes on the host wake it at once
(:mod:`flwd_server.events.wakeups`); with PostgreSQL, a ``LISTEN`` connection is
woken by the ``NOTIFY`` every event-writing transaction sends, from any node.
Polling is the fallback.

A thousand streams may follow one busy run, so neither reading nor waiting
takes a shared lock:

* the buffer is published as one immutable *view* ``(floor, last, events,
  ids)``; the poller only appends to the lists or replaces them (when it
  trims), so a reader that took the view reads a consistent snapshot bounded
  by ``last``;
* each waiting stream parks on its own lock, which the poller releases when
  new events arrive - no thundering herd on one condition's lock.

A stream that fell behind the buffer reads the database directly, then
catches up.
"""

from __future__ import annotations

import bisect
import logging
import threading
from _thread import allocate_lock
from collections import deque
from collections.abc import Callable

from ..errors import StorageError
from ..forksafe import reset_after_fork
from ..models import Event, EventType
from ..store import Store
from ..store.event_filter import EventFilter
from .routing import RunOrigins, route
from .wakeups import Wakeups

log = logging.getLogger("flwd.events")
FETCH_LIMIT = 5000
LOCAL_BATCHES = 16  # committed batches of this process's writer kept for the poller; past that it reads them
OUTPUT = EventType.STEP_OUTPUT.value

Listener = Callable[[list[Event]], None]


def _size(events: list[Event]) -> int:
    """What events count against the buffer's ``max_bytes``: their stored text and 64 bytes each."""
    return sum([len(e.raw) for e in events]) + 64 * len(events)


def control_only(listener: Listener) -> Listener:
    """Mark a listener that acts only on control events: the poller hands it a batch without step output.

    A job printing 200,000 lines would otherwise have every such listener test every line.
    """
    listener.control_only = True  # type: ignore[attr-defined]
    return listener


class EventHub:
    def __init__(
        self, store: Store, poll_interval: float = 0.02, max_events: int = 20000, max_bytes: int = 32 * 1024 * 1024
    ) -> None:
        self.store = store
        self.poll_interval = poll_interval
        self.max_events = max_events
        self.max_bytes = max_bytes
        self._listeners: list[Listener] = []  # every event
        self._control_listeners: list[Listener] = []  # every event but step output
        self.origins = RunOrigins(store)
        self.wakeups = Wakeups(store.wakeup_key)
        self._reset()
        store.add_commit_listener(self._after_commit)
        reset_after_fork(self, "_reset")

    def _reset(self) -> None:
        self._start_lock = threading.Lock()
        # every event with floor < id <= last is in events (ids[i] is events[i].id)
        self._view: tuple[int, int, list[Event], list[int]] = (0, 0, [], [])
        self._bytes = 0
        self._waiters: list = []
        self._watchers = 0
        self._local: deque[list[tuple]] = deque()  # this process's committed event rows, oldest first
        self.handed = 0  # batches published from the writer's hand instead of read back (tests, introspection)
        self._thread: threading.Thread | None = None
        self._closed = False
        self.polls = 0
        self.queries = 0

    def add_listener(self, listener: Listener, control_only: bool | None = None) -> None:
        """Called with each new batch of events (on the poller thread; keep it quick).

        With ``control_only`` (default: whether the listener is marked :func:`control_only`)
        the batch has no ``step.output`` events, and a batch of nothing else is not handed on.
        """
        if control_only is None:
            control_only = getattr(listener, "control_only", False)
        (self._control_listeners if control_only else self._listeners).append(listener)

    def start(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            return
        with self._start_lock:
            if self._thread is not None and self._thread.is_alive():
                return
            last = self.store.last_event_id()
            self._view = (last, last, [], [])
            self._thread = threading.Thread(target=self._poll_loop, name="flwd-event-poller", daemon=True)
            self._thread.start()

    def close(self, wait: bool = True) -> None:
        """Stop the poller; with ``wait``, until it is gone (the store closes next: its connections must be idle)."""
        self._closed = True
        self.wakeups.wake_self()
        self._release_waiters()
        thread = self._thread
        if wait and thread is not None and thread is not threading.current_thread():
            thread.join(timeout=15)

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def last_id(self) -> int:
        return self._view[1]

    @property
    def _events(self) -> list[Event]:
        """The buffered events (for tests and introspection)."""
        floor, last, events, ids = self._view
        return events[: bisect.bisect_right(ids, last)]

    def wake(self) -> None:
        self.wakeups.wake_self()

    def _after_commit(self, rows: list[tuple]) -> None:
        """This process wrote: look now, and tell the other processes on this host to look too.

        With a follower here the committed event rows are handed to the poller, which publishes them
        without reading them back when they follow its last event (see :meth:`_take_local`).
        """
        if rows and self._watchers > 0 and not self._closed and len(self._local) < LOCAL_BATCHES:
            self._local.append(rows)
        self.wakeups.wake_self()
        if not self.store.notifies_peers:
            self.wakeups.wake_peers()

    def _poll_loop(self) -> None:
        watch = None
        failing = False  # a database that cannot be read is said once, not at every poll
        try:
            while not self._closed:
                if watch is None:
                    try:
                        watch = self.store.watch(self.wakeups)
                    except (*self.store.errors, StorageError) as exc:  # the database is away: try again after a pause
                        if not failing:
                            log.warning("event poller cannot reach the database: %s; retrying", exc)
                        failing = True
                        self.wakeups.wait(max(self.poll_interval, 1.0))
                        continue
                watch.wait(self.poll_interval)
                self.polls += 1
                try:
                    if watch.changed():
                        self._fetch(getattr(watch, "conn", None))
                    if failing:
                        log.info("event poller reads the database again")
                        failing = False
                except (*self.store.errors, StorageError) as exc:  # an expected condition: one line, then a pause
                    if not failing:
                        log.warning(
                            "event poller cannot read the database: %s; retrying",
                            exc.detail if isinstance(exc, StorageError) else exc,
                        )
                    failing = True
                    watch.reset()
                    self.wakeups.wait(max(self.poll_interval, 0.5))
                except Exception:  # never let the poller die: streams depend on it
                    log.exception("event poller failed; retrying")
                    watch.reset()
        finally:
            if watch is not None:
                watch.close()
            self.wakeups.close()

    def watch(self) -> None:
        """A follower (an event stream) is here: keep every event in memory, not just control events."""
        self._watchers += 1

    def unwatch(self) -> None:
        self._watchers -= 1

    def _fetch(self, conn) -> None:
        if self._watchers <= 0:
            self._local.clear()
            self._fetch_control(conn)
            return
        self._take_local()
        while True:  # what other processes wrote, and whatever the writer's hand did not cover
            self.queries += 1
            fresh = self.store.events_after(self._view[1], None, FETCH_LIMIT, conn=conn)
            if not fresh:
                return
            self._deliver(fresh)
            if len(fresh) < FETCH_LIMIT:
                return

    def _take_local(self) -> None:
        """Publish this process's committed batches that follow the last event published, unread.

        Ids are taken under the store's write lock in commit order, so a batch whose first id is
        the one after ``last`` has nothing before it that is not published yet.  Any other batch
        (another process wrote in between, ids skipped, a batch not kept) is left to the query,
        which reads everything committed.  It saves reading back every line a local job prints.
        """
        local = self._local
        while local:
            rows = local.popleft()
            last = self._view[1]
            if rows[-1][0] <= last:
                continue  # read from the database already
            if rows[0][0] != last + 1:
                local.clear()
                return
            self.handed += 1
            self._deliver([Event(row[0], row[1], row[2], row[3], row[4]) for row in rows])

    def _deliver(self, fresh: list[Event]) -> None:
        self._publish(fresh)
        self._release_waiters()
        self._notify(self._listeners, fresh)
        if self._control_listeners:
            self._notify(self._control_listeners, [e for e in fresh if e.type != OUTPUT])

    def _fetch_control(self, conn) -> None:
        """Nobody follows streams in this process: read only what the runner and the caches act on.

        A job printing 100,000 lines a second would otherwise cost every worker
        the parsing of every line.  The buffer stays empty; a stream that
        starts later reads its history from the database, then the buffer fills.
        """
        self.queries += 1
        last = self._view[1]
        newest = self.store.last_event_id(conn)
        if newest <= last:
            return
        control = self.store.control_events_after(last, newest, conn)
        self._bytes = 0
        self._view = (newest, newest, [], [])
        self._release_waiters()
        self._notify(self._listeners, control)
        self._notify(self._control_listeners, control)

    @staticmethod
    def _notify(listeners: list[Listener], events: list[Event]) -> None:
        if not events:
            return
        for listener in listeners:
            try:
                listener(events)
            except Exception:
                log.exception("event listener failed")

    def _publish(self, fresh: list[Event]) -> None:
        """Append a batch to the buffer and trim it to its bounds; a batch at a time, not an event at a time."""
        floor, _, events, ids = self._view
        events.extend(fresh)  # appends never disturb a reader's snapshot: it stops at its ``last``
        ids.extend([e.id for e in fresh])
        self._bytes += _size(fresh)
        drop = min(max(len(events) - self.max_events, 0), len(events) - 1)  # the newest event always stays
        if drop:
            self._bytes -= _size(events[:drop])
        while drop < len(events) - 1 and self._bytes > self.max_bytes:
            self._bytes -= len(events[drop].raw) + 64
            drop += 1
        if drop:
            floor = ids[drop - 1]
            events, ids = events[drop:], ids[drop:]  # new lists: readers of the old ones are unaffected
        self._view = (floor, fresh[-1].id, events, ids)

    def _release_waiters(self) -> None:
        waiters, self._waiters = self._waiters, []
        for lock in waiters:
            lock.release()

    def read(
        self, after: int, run_id: str | None = None, limit: int = 500, *, event_filter: EventFilter | None = None
    ) -> tuple[list[Event], int]:
        """Events with ``id > after`` (of one run, or passing ``event_filter``, if given) and the position read up to."""
        if run_id is not None:
            event_filter = EventFilter.for_run(run_id)
        if event_filter is not None and event_filter.everything:
            event_filter = None
        floor, last, events, ids = self._view
        if after >= last:
            return [], after
        if after >= floor:
            start = bisect.bisect_right(ids, after)
            end = bisect.bisect_right(ids, last, lo=start)
            if event_filter is None:
                chunk = events[start : min(end, start + limit)]
                return chunk, chunk[-1].id
            origins = self.origins if event_filter.needs_origin else None
            if origins is not None:
                origins.learn(events[index].run_id for index in range(start, end))
            out = []
            for index in range(start, end):
                event = events[index]
                if event_filter.matches(event, origins.get(event.run_id) if origins is not None else None):
                    out.append(event)
                    if len(out) >= limit:
                        return out, event.id
            return out, last
        # Behind the buffer: read history from the database, filtered there.  Everything up
        # to ``last`` was committed before this query starts, so it is all visible.
        if event_filter is None:
            history = self.store.events_after(after, None, limit)
        else:
            history = self.store.events_matching(after, event_filter, limit)
        if len(history) >= limit:
            return history, history[-1].id
        return history, max(last, history[-1].id if history else after)

    def read_many(
        self, after: int, filters: list[EventFilter], limit: int = 500
    ) -> tuple[dict[EventFilter, tuple[list[Event], int]], bool]:
        """For the broadcaster: per filter, its events after ``after`` and the position read up to; and
        whether more is waiting.  From the buffer, the events are read once and routed by an index
        (:func:`~flwd_server.events.routing.route`), so an event costs nothing per stream it does not match."""
        floor, last, events, ids = self._view
        if after >= last:
            return {f: ([], after) for f in filters}, False
        if after < floor:
            behind = {f: self.read(after, limit=limit, event_filter=f) for f in filters}
            return behind, any(len(found) >= limit for found, _ in behind.values())
        start = bisect.bisect_right(ids, after)
        end = bisect.bisect_right(ids, last, lo=start)
        stop = min(end, start + limit)
        chunk = events[start:stop]
        routed = route(chunk, filters, self.origins)
        position = chunk[-1].id
        return {f: (routed.get(f, []), position) for f in filters}, stop < end

    def wait(self, after: int, timeout: float) -> bool:
        """Block until an event newer than ``after`` exists; False on timeout or close."""
        if self._view[1] > after:
            return True
        if self._closed:
            return False
        lock = allocate_lock()
        lock.acquire()
        self._waiters.append(lock)
        if self._view[1] > after or self._closed:  # arrived while we registered: no wake-up is lost
            return not self._closed
        if not lock.acquire(timeout=timeout):  # released by the poller when events arrive
            try:
                self._waiters.remove(lock)  # idle streams must not pile up stale locks
            except ValueError:
                pass  # the poller took the list meanwhile; its late release is harmless
        return self._view[1] > after and not self._closed
