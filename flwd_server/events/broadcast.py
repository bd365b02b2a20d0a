"""One thread per process that writes every live event stream to its socket.

With a thread per stream, an event that a thousand clients follow means a
thousand threads woken, each taking the GIL in turn to send a few hundred
bytes: the handoffs, not the work, cap how many clients a worker can serve.
Here the request thread of a stream sends the response head through the
WSGI server as usual, then hands its socket to the :class:`Broadcaster` and
waits.  The broadcaster's one thread reads each batch of new events once per
(run, position), frames it once, and sends it to every follower with
non-blocking writes, one ``send`` a stream for everything pending; a client
that does not read gets a bounded buffer and is then dropped (it resumes
with ``Last-Event-ID``).  It yields to the request threads (:class:`Broadcaster`):
the busier the process, the more events each send carries.  When the stream ends it
gives the socket back (blocking again, every byte written) and the request
thread returns, so the WSGI server closes the response normally.

Under ``flwd :serve`` the request thread does not wait: the body raises
:class:`HandOff` right after the first chunk, the worker
(:class:`~flwd_server.web.worker.FlwdWorker`) catches it past gunicorn's
response handling and gives the connection to the broadcaster for good, and
the thread goes back to the pool.  The broadcaster then ends the response
itself (the last chunk) and tells the worker, which closes the connection.
An open stream costs a socket and a buffer, not a thread.

This needs the raw socket (gunicorn's ``gunicorn.socket``, plain HTTP/1.x);
anything else uses the per-thread generator in :mod:`flwd_server.events.sse`.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import selectors
import socket
import threading
import time
from collections.abc import Callable, Iterator

from ..forksafe import reset_after_fork
from ..models import EventType
from ..store.event_filter import EventFilter
from .hub import EventHub
from .sse import HEARTBEAT

log = logging.getLogger("flwd.sse")
TERMINAL = EventType.RUN_FINISHED.value
# In the WSGI environ when the server catches HandOff (FlwdWorker): a stream then gives its thread back.
HAND_OFF = "flwd.hand_off"
LAST_CHUNK = b"0\r\n\r\n"
SWEEP = 0.1  # seconds
STALLED = "the client read nothing for {:g}s; it may resume with Last-Event-ID"


class HandOff(BaseException):
    """Raised by a stream's WSGI body after its first chunk: the connection is the broadcaster's now.

    A ``BaseException`` so that it passes the WSGI server's handlers (which
    catch ``Exception`` and would write an error or close the socket), and
    before the server ends the response: the broadcaster writes the end.
    ``start(closed)`` attaches the stream; ``closed(reusable)`` is called (on the broadcaster's
    thread) when it is over: True if its last chunk went out whole (keep the connection alive).
    """

    def __init__(self, start: Callable[[Callable[[bool], None]], None]) -> None:
        super().__init__("event stream handed to the broadcaster")
        self.start = start


def chunk(data: bytes) -> bytes:
    """HTTP/1.1 chunked framing, as the WSGI server would have written it."""
    return b"%x\r\n%s\r\n" % (len(data), data)


class Subscription:
    __slots__ = (
        "sock",
        "run_id",
        "filter",
        "position",
        "chunked",
        "out",
        "last_write",
        "last_progress",
        "ends_at",
        "finishing",
        "done",
        "failed",
        "reason",
        "mask",
        "on_end",
        "ended",
    )

    def __init__(
        self,
        sock: socket.socket,
        after: int,
        run_id: str | None,
        chunked: bool,
        max_duration: float,
        event_filter: EventFilter | None = None,
        on_end: Callable[[bool], None] | None = None,
    ) -> None:
        self.sock = sock
        self.run_id = run_id  # a run's stream: it ends after that run's run.finished
        self.filter = EventFilter.for_run(run_id) if run_id is not None else event_filter or EventFilter()
        self.position = after
        self.chunked = chunked
        self.out = bytearray()
        self.last_write = self.last_progress = time.monotonic()
        self.ends_at = self.last_write + max_duration
        self.finishing = False  # send what is buffered, then give the socket back
        self.done = threading.Event()
        self.failed = False
        self.reason = ""
        # What the broadcaster's selector watches: EVENT_WRITE while ``out`` waits, EVENT_READ if handed off.
        self.mask = 0
        self.on_end = on_end  # a handed-off stream: no thread waits; the broadcaster ends the response
        self.ended = False  # the last chunk is in ``out``

    def frame(self, data: bytes) -> bytes:
        return chunk(data) if self.chunked else data


class Broadcaster:
    """See the module's docstring; the other arguments set how the thread gives way to requests.

    A round (one read of the new events, one ``send`` per stream) is followed by a pause of
    ``pace`` x the CPU time it took (at most ``max_pause``; none while a backlog remains, or
    after a round that sent nothing); rounds start at least ``min_interval`` apart.
    Events that arrive meanwhile go out together in the next round: the busier the process,
    the fewer sends an event costs, and the request threads get the GIL for as long as the
    broadcaster had it.
    """

    def __init__(
        self,
        hub: EventHub,
        *,
        heartbeat: float,
        max_duration: float,
        max_batch: int = 256 * 1024,
        stall_timeout: float = 30.0,
        is_closing: Callable[[], bool] = lambda: False,
        pace: float = 1.0,
        min_interval: float = 0.0,
        max_pause: float = 0.01,
    ) -> None:
        self.hub = hub
        self.heartbeat = heartbeat
        self.max_duration = max_duration
        self.max_batch = max_batch
        self.stall_timeout = stall_timeout
        self.is_closing = is_closing
        self.pace, self.min_interval, self.max_pause = pace, min_interval, max_pause
        # Every stream's clocks (heartbeat, stall, max duration, closing) are checked this often, not at each wake-up.
        self.sweep_every = min(SWEEP, heartbeat / 2, stall_timeout / 2)
        hub.add_listener(lambda events: self._poke())
        self._reset()
        reset_after_fork(self, "_reset")

    def _reset(self) -> None:
        self._lock = threading.Lock()
        self._incoming: list[Subscription] = []
        self._subs: list[Subscription] = []
        self._dirty: set[Subscription] = set()  # streams whose watch or end is to be looked at (this thread's)
        self._thread: threading.Thread | None = None
        self._wake_r: int | None = None
        self._wake_w: int | None = None
        self._drained = False
        self.sends = 0  # send calls, for tests and profiles

    @property
    def active(self) -> int:
        return len(self._subs) + len(self._incoming)

    def attach(
        self,
        sock: socket.socket,
        after: int,
        run_id: str | None,
        chunked: bool,
        event_filter: EventFilter | None = None,
        on_end: Callable[[bool], None] | None = None,
    ) -> Subscription:
        """Take over ``sock`` (the response head is already sent); returns when the broadcaster has it.

        Without ``on_end`` the socket is given back (``done``) when the stream ends; with it, the
        broadcaster writes the response's end itself and calls ``on_end`` instead."""
        sub = Subscription(sock, after, run_id, chunked, self.max_duration, event_filter, on_end)
        sock.setblocking(False)
        self.hub.watch()
        with self._lock:
            self._ensure_thread()
            self._incoming.append(sub)
        self._poke()
        return sub

    def _ensure_thread(self) -> None:
        """Started on the first attach and kept (idle, it wakes once a second)."""
        if self._thread is None or not self._thread.is_alive():
            if self._wake_r is None:
                self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
            self._thread = threading.Thread(target=self._loop, name="flwd-broadcaster", daemon=True)
            self._thread.start()

    def _poke(self) -> None:
        if self._wake_w is not None:
            with contextlib.suppress(BlockingIOError, OSError):
                os.write(self._wake_w, b"!")

    # -- the one thread --------------------------------------------------------

    def _loop(self) -> None:
        selector = selectors.DefaultSelector()
        assert self._wake_r is not None
        selector.register(self._wake_r, selectors.EVENT_READ, None)
        seen = self.hub.last_id
        more = joined = False  # joined: a stream came since the last round (its history may be all seen)
        next_round = next_sweep = 0.0
        while True:
            now = time.monotonic()
            pending = more or joined or self._drained or self._incoming or self.hub.last_id != seen
            timeout = max(0.0, (next_round if pending else next_sweep) - now)
            ready_keys = selector.select(timeout)
            now = time.monotonic()
            for key, ready in ready_keys:
                if key.data is None:
                    with contextlib.suppress(BlockingIOError, OSError):
                        while os.read(self._wake_r, 4096):
                            pass
                    continue
                if ready & selectors.EVENT_READ:
                    self._read(key.data)
                if ready & selectors.EVENT_WRITE:
                    self._flush(key.data, now)
            with self._lock:
                fresh, self._incoming = self._incoming, []
            self._subs.extend(fresh)
            self._dirty.update(fresh)
            joined = joined or bool(fresh)
            if now >= next_round and (joined or more or self._drained or self.hub.last_id != seen):
                seen, joined, self._drained = self.hub.last_id, False, False
                cpu, sends = time.thread_time(), self.sends  # CPU: not the time other processes had the core
                more = self._deliver(now)
                # No pause for a backlog (it would only slow a stream that is behind), nor after sending nothing.
                pause = 0.0 if more or self.sends == sends else (time.thread_time() - cpu) * self.pace
                next_round = max(now + self.min_interval, time.monotonic() + min(self.max_pause, pause))
            sweep = now >= next_sweep
            if sweep:
                next_sweep = now + (self.sweep_every if self._subs else 1.0)
            self._housekeep(selector, now, sweep)

    def _deliver(self, now: float) -> bool:
        """Read each position once, route its events to the filters that want them, frame each once.

        Followers at one position with equal filters share a batch: every event
        pending for them, in one ``send`` each.  The events of a position are read
        once and routed by an index of the filters (:meth:`EventHub.read_many`), so
        an event no follower wants costs no follower anything.  A follower whose
        last batch is still unsent takes nothing new: it falls behind (and later
        reads history) instead of piling up memory.
        """
        positions: dict[int, dict[EventFilter, list[Subscription]]] = {}
        for sub in self._subs:
            if not sub.finishing and not sub.out and not sub.failed:
                positions.setdefault(sub.position, {}).setdefault(sub.filter, []).append(sub)
        more = False
        for position, groups in positions.items():
            results, waiting = self.hub.read_many(position, list(groups))
            more = more or waiting
            for event_filter, subs in groups.items():
                events, new_position = results[event_filter]
                if not events:
                    for sub in subs:
                        sub.position = new_position
                    continue
                frames, size = [], 0
                for event in events:  # one batch stays under max_batch bytes (a single event may exceed it)
                    frame = event.sse_frame()
                    if frames and size + len(frame) > self.max_batch:
                        new_position, more = events[len(frames) - 1].id, True
                        break
                    frames.append(frame)
                    size += len(frame)
                data = b"".join(frames)
                ended = any(e.type == TERMINAL for e in events[: len(frames)])
                framed = {True: chunk(data), False: data}
                for sub in subs:
                    sub.position = new_position
                    if ended and sub.run_id is not None:
                        sub.finishing = True
                    self._send(sub, now, framed[sub.chunked])
        return more

    def _send(self, sub: Subscription, now: float, data: bytes = b"") -> None:
        """One ``send`` of what waits for ``sub`` (``out``, then ``data``); what the socket does not take waits in ``out``."""
        if sub.failed:
            return
        if sub.out:
            sub.out += data
            data = sub.out
        if data:
            self.sends += 1
            try:
                sent = sub.sock.send(data)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError as exc:
                self._fail(sub, f"the client went away ({errno.errorcode.get(exc.errno or 0, exc.__class__.__name__)})")
                return
            if sent:
                sub.last_write = sub.last_progress = now
            if data is sub.out:
                del sub.out[:sent]
            elif sent < len(data):  # a partial write: the rest waits, whole, for room on the socket
                sub.out += memoryview(data)[sent:]
            if not sent and now - sub.last_progress > self.stall_timeout:
                self._fail(sub, STALLED.format(self.stall_timeout))
                return
        if sub.out or sub.finishing or sub.mask & selectors.EVENT_WRITE:
            self._dirty.add(sub)

    def _flush(self, sub: Subscription, now: float) -> None:
        self._send(sub, now)
        if not sub.out and sub.mask & selectors.EVENT_WRITE:
            self._drained = True  # it may be behind: give it the next batch

    def _read(self, sub: Subscription) -> None:
        """A handed-off stream's client sends nothing: readable means it closed (or sent what nobody reads)."""
        try:
            data = sub.sock.recv(4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            data = b""
            if not sub.failed:
                self._fail(sub, f"the client went away ({errno.errorcode.get(exc.errno or 0, 'error')})")
        if not data and not sub.failed:
            self._fail(sub, "the client closed the connection")

    @staticmethod
    def _watch(selector: selectors.BaseSelector, sub: Subscription) -> None:
        """Watch for what ``sub`` waits for: room to write its ``out``, and a handed-off client leaving."""
        mask = (selectors.EVENT_WRITE if sub.out else 0) | (selectors.EVENT_READ if sub.on_end is not None else 0)
        if sub.failed or (sub.finishing and not sub.out):
            mask = 0
        if mask == sub.mask:
            return
        with contextlib.suppress(KeyError, ValueError, OSError):
            if not sub.mask:
                selector.register(sub.sock, mask, sub)
            elif not mask:
                selector.unregister(sub.sock)
            else:
                selector.modify(sub.sock, mask, sub)
        sub.mask = mask

    def _fail(self, sub: Subscription, reason: str) -> None:
        sub.failed = True
        sub.reason = reason
        sub.out.clear()
        self._dirty.add(sub)

    def _housekeep(self, selector: selectors.BaseSelector, now: float, sweep: bool) -> None:
        """The streams whose state changed (``_dirty``); with ``sweep``, every stream's clocks first."""
        if sweep:
            closing = self.is_closing() or self.hub.closed
            for sub in self._subs:
                if sub.failed:
                    continue
                if closing or now >= sub.ends_at:
                    sub.finishing = True
                    self._dirty.add(sub)
                if sub.out and now - sub.last_progress > self.stall_timeout:
                    self._fail(sub, STALLED.format(self.stall_timeout))
                elif not sub.out and not sub.finishing and now - sub.last_write >= self.heartbeat:
                    self._send(sub, now, sub.frame(HEARTBEAT))
        if not self._dirty:
            return
        dirty, self._dirty = self._dirty, set()
        gone = False
        for sub in dirty:
            if sub.done.is_set():
                continue
            if not sub.failed and sub.finishing and not sub.out and sub.on_end is not None and sub.chunked:
                if not sub.ended:
                    sub.ended = True  # a handed-off response: its last chunk is the broadcaster's to write
                    self._send(sub, now, LAST_CHUNK)
            self._watch(selector, sub)  # before the socket is given back: then it is no longer watched
            if sub.failed or (sub.finishing and not sub.out):
                self._give_back(sub)
                gone = True
        self._dirty -= {sub for sub in dirty if sub.done.is_set()}
        if gone:
            self._subs = [sub for sub in self._subs if not sub.done.is_set()]

    def _give_back(self, sub: Subscription) -> None:
        self.hub.unwatch()
        if sub.on_end is not None:  # handed off: nobody waits for the socket, its owner closes it
            sub.done.set()
            try:
                sub.on_end(sub.ended and not sub.failed)
            except Exception:
                log.exception("ending a handed-off event stream failed")
            return
        if not sub.failed:
            with contextlib.suppress(OSError):
                sub.sock.setblocking(True)
        sub.done.set()


class BroadcastBody:
    """The WSGI body of a stream the broadcaster writes; ``release`` runs once, when the stream is over.

    The first chunk goes through the WSGI server (which sends the head with
    it); then the socket is the broadcaster's until the stream ends.  With
    ``hand_off`` (the server catches :class:`HandOff`) the request thread
    leaves at once; otherwise it waits here, and a client that went away ends
    the response with a connection reset, which the server closes quietly.
    """

    def __init__(
        self,
        broadcaster: Broadcaster,
        sock: socket.socket,
        *,
        after: int,
        run_id: str | None,
        chunked: bool,
        retry_ms: int,
        event_filter: EventFilter | None = None,
        release: Callable[[], None] = lambda: None,
        hand_off: bool = False,
    ) -> None:
        self.broadcaster = broadcaster
        self.sock = sock
        self.stream = (after, run_id, chunked, event_filter)
        self.retry_ms = retry_ms
        self.hand_off = hand_off
        self._release: Callable[[], None] | None = release
        self._lock = threading.Lock()
        self.handed_off = False

    def __iter__(self) -> Iterator[bytes]:
        return self._frames()

    def _frames(self) -> Iterator[bytes]:
        yield f"retry: {self.retry_ms}\n\n".encode()
        if self.hand_off:
            self.handed_off = True
            raise HandOff(self._attach_handed_off)
        sub = self.broadcaster.attach(self.sock, *self.stream)
        sub.done.wait()
        if sub.failed:
            log.debug("event stream dropped: %s", sub.reason)
            raise ConnectionResetError(errno.ECONNRESET, sub.reason)

    def _attach_handed_off(self, closed: Callable[[bool], None]) -> None:
        def on_end(reusable: bool) -> None:
            self._release_once()
            closed(reusable)

        try:
            self.broadcaster.attach(self.sock, *self.stream, on_end=on_end)
        except BaseException:
            self._release_once()
            raise

    def close(self) -> None:
        """Called by the WSGI server when the response is done, or handed off (then the stream's end releases)."""
        if not self.handed_off:
            self._release_once()

    def _release_once(self) -> None:
        with self._lock:
            release, self._release = self._release, None
        if release is not None:
            release()


def can_take_over(environ: dict) -> socket.socket | None:
    """The raw socket of a plain HTTP/1.x GET under gunicorn, or None (then the generator path serves)."""
    sock = environ.get("gunicorn.socket")
    if type(sock) is not socket.socket or environ.get("REQUEST_METHOD") != "GET":
        return None
    if environ.get("SERVER_PROTOCOL") not in ("HTTP/1.1", "HTTP/1.0"):
        return None
    return sock
