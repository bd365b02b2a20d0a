"""Server-Sent Events: framing, resume position and the stream generator.

The generator holds no request context and no database transaction across a
``yield``; it reads from the process's :class:`~flwd_server.events.hub.EventHub`.
A client that disconnects is noticed at the next write (an event or a
heartbeat comment every ``heartbeat`` seconds): the server then closes the
generator and its ``finally`` releases the stream slot.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Iterator

from ..errors import BadRequest, Unavailable
from ..models import EventType
from ..store.event_filter import EventFilter
from .hub import EventHub

HEARTBEAT = b": ping\n\n"
MAX_EVENT_ID = 2**63 - 1
_EVENT_ID_RE = re.compile(r"[0-9]{1,19}")


def parse_last_event_id(header: str | None, query: str | None) -> int:
    """Resume position from ``Last-Event-ID`` or ``?after=`` (the header wins); 0 means from the start.

    Both are checked when both are sent: a malformed value is a 400 even where the other one counts.
    """
    positions = [_event_id(raw) for raw in (header, query) if raw not in (None, "")]
    return positions[0] if positions else 0


def _event_id(raw: str) -> int:
    if not _EVENT_ID_RE.fullmatch(raw) or int(raw) > MAX_EVENT_ID:  # ASCII digits: '²'.isdigit() is True
        raise BadRequest(f"Last-Event-ID / after must be a non-negative event id, got {raw[:40]!r}")
    return int(raw)


def crowd_pause(open_streams: int, longest: float) -> float:
    """How long a stream waits after a write before the next, given how many this worker serves.

    One stream never waits (a user following a run sees each line at once);
    a thousand wait ``longest``, so a busy run wakes each of them a few dozen
    times a second instead of once per line, which the GIL cannot afford.
    """
    if open_streams <= 1:
        return 0.0
    return longest * min(1.0, open_streams / 1000)


class StreamSlots:
    """Caps open streams per process, so streams never starve API requests of threads."""

    def __init__(self, limit: int, on_change: Callable[[int], None] | None = None) -> None:
        self.limit = limit
        self.open = 0
        self.on_change = on_change  # told the new count (the open-streams gauge)
        self._lock = threading.Lock()

    def acquire(self) -> None:
        with self._lock:
            if self.open >= self.limit:
                raise Unavailable(
                    f"this worker already serves {self.open} event streams (sse.max_streams); retry shortly",
                    retry_after=2,
                )
            self.open += 1
            count = self.open
        if self.on_change is not None:
            self.on_change(count)

    def release(self) -> None:
        with self._lock:
            self.open -= 1
            count = self.open
        if self.on_change is not None:
            self.on_change(count)


def event_stream(
    hub: EventHub,
    *,
    after: int,
    run_id: str | None = None,
    event_filter: EventFilter | None = None,
    heartbeat: float = 15.0,
    max_duration: float = 3600.0,
    retry_ms: int = 2000,
    is_closing: Callable[[], bool] = lambda: False,
    clock: Callable[[], float] = time.monotonic,
    pause: Callable[[], float] = lambda: 0.0,
) -> Iterator[bytes]:
    """Yield SSE frames: history after ``after``, then live events.

    A run's stream (``run_id``) ends after that run's ``run.finished`` event;
    ``event_filter`` selects the events of a global stream, which does not end
    by itself.  Every stream ends after ``max_duration`` (the client resumes
    with Last-Event-ID) or when the server shuts down.
    """
    terminal = EventType.RUN_FINISHED.value if run_id is not None else None
    if run_id is not None:
        event_filter = EventFilter.for_run(run_id)
    hub.watch()
    try:
        yield f"retry: {retry_ms}\n\n".encode()
        yield from _follow(hub, after, event_filter, heartbeat, max_duration, is_closing, clock, pause, terminal)
    finally:
        hub.unwatch()


def _follow(
    hub: EventHub,
    after: int,
    event_filter: EventFilter | None,
    heartbeat: float,
    max_duration: float,
    is_closing: Callable[[], bool],
    clock: Callable[[], float],
    pause: Callable[[], float],
    terminal: str | None,
) -> Iterator[bytes]:
    started = last_write = clock()
    position = after
    while True:
        events, position = hub.read(position, event_filter=event_filter)
        if events:
            yield b"".join(e.sse_frame() for e in events)
            last_write = clock()
            if terminal is not None and any(e.type == terminal for e in events):
                return
            rest = pause()
            if rest > 0.001:
                time.sleep(rest)  # let events gather: one write carries several when streams are many
            continue
        now = clock()
        if now - started >= max_duration or is_closing() or hub.closed:
            return
        wait = min(heartbeat - (now - last_write), max_duration - (now - started))
        if wait <= 0 or not hub.wait(position, wait):
            if clock() - last_write >= heartbeat:
                yield HEARTBEAT
                last_write = clock()


class ClosingStream:
    """A WSGI body whose ``close`` always releases the stream's slot, exactly once.

    A generator's ``finally`` never runs if the generator was never started
    (a client gone before the first byte), so the release lives here instead.
    """

    def __init__(self, frames: Iterator[bytes], on_close: Callable[[], None]) -> None:
        self._frames = frames
        self._on_close: Callable[[], None] | None = on_close

    def __iter__(self) -> Iterator[bytes]:
        return self._frames

    def close(self) -> None:
        close = getattr(self._frames, "close", None)
        if close is not None:
            close()
        callback, self._on_close = self._on_close, None
        if callback is not None:
            callback()
