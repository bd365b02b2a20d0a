"""``FlwdWorker``: gunicorn's gthread worker, with request heads read without a thread.

gunicorn's ``ThreadWorker`` (27.x) waits for a connection's first byte off the
pool, then reads the request head on a pool thread with blocking reads: a
client that sends one byte a second holds a thread for as long as it likes,
and a few dozen such clients leave none for ``/healthz``.  Here the poller
(the worker's main thread) reads every head non-blocking into a buffer of the
connection's own; only a complete head (up to its blank line) goes to the
pool, its bytes given back to gunicorn's parser, so a slow client costs a
socket and a buffer, never a thread.  A head that is not complete within
``http.header_timeout`` seconds, or that outgrows the limits gunicorn's parser
would enforce (``limit_request_line``, ``limit_request_fields`` x
``limit_request_field_size``), is dropped.  Kept-alive connections go through
the same path for their next request.

An event stream gives its thread back, too: its body raises
:class:`~flwd_server.events.broadcast.HandOff` after the response head and
first chunk, which passes gunicorn's response handling (a ``BaseException``)
to :meth:`FlwdWorker.handle`; the connection then belongs to the engine's
broadcaster, which writes every parked stream from one thread and reports the
stream's end here, where the connection is closed and no longer counted.  The
worker's ``worker_connections`` count streams with the rest, and a stopping
worker waits for them as for any connection (the engine ends them at once).

The worker also leaves at once when gunicorn's master is gone (SIGKILL): it
closes its listening sockets, so clients are refused and a new server can
bind the port, and the engine stops its runs, which end ``lost``.

Subclassing gunicorn's worker ties flwd to its internals (``enqueue_req``,
``handle``, ``murder_pending``, ``is_parent_alive``, ``TConn``), which changed
between 23 and 27: setup.cfg pins the range this is tested with.
"""

from __future__ import annotations

import time
from concurrent.futures import Future
from functools import partial
from selectors import EVENT_READ
from typing import Any

from gunicorn.workers.gthread import ThreadWorker

from ..config import HTTPSettings
from ..engine import Engine
from ..events.broadcast import HAND_OFF, HandOff

HEAD_END = b"\r\n\r\n"
READ_SIZE = 65536
STOP_LINGER = 2.0  # seconds a stopping worker still waits for a head under way
REFUSED = b"HTTP/1.1 431 Request Header Fields Too Large\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
MASTER_GONE = "the server's master process died; the worker stopped the run"
HANDED_OFF = object()  # what ``handle`` returns for a connection the broadcaster now owns


def engine_of(worker: Any) -> Engine | None:
    """The engine of the app a gunicorn worker serves (None before the app is loaded)."""
    app = getattr(worker, "flwd_app", None) or getattr(worker, "wsgi", None)
    config = getattr(app, "config", None)
    return config.get("FLWD_ENGINE") if config else None


def head_limit(cfg: Any) -> int:
    """The largest head gunicorn's parser can accept with these limits (0 means its own maximum)."""
    line = cfg.limit_request_line if cfg.limit_request_line > 0 else 8190
    fields = cfg.limit_request_fields if cfg.limit_request_fields > 0 else 32768
    field_size = cfg.limit_request_field_size if cfg.limit_request_field_size > 0 else 8190
    return (
        2 + line + 2 + fields * (field_size + 2) + 2
    )  # an optional leading CRLF, the line, the fields, the blank line


def head_complete(data: bytes | bytearray) -> bool:
    """Whether ``data`` holds a whole request head (RFC 9112 allows one empty line before it)."""
    return data.find(HEAD_END, 2 if data[:2] == b"\r\n" else 0) >= 0


class FlwdWorker(ThreadWorker):
    """gthread with request heads read by the poller; see the module's docstring."""

    @classmethod
    def check_config(cls, cfg: Any, log: Any) -> None:
        # Heads are read from the raw socket before the pool sees it: a TLS handshake or an h2c
        # preface would have to happen first, on the poller.  flwd :serve sets neither (nginx
        # terminates TLS), so a configuration that does is refused rather than served half-protected.
        if cfg.is_ssl or getattr(cfg, "http2_cleartext", "off") != "off":
            raise RuntimeError(
                "FlwdWorker serves plain HTTP/1.x only: terminate TLS in a proxy (see docs/deployment.rst)"
            )
        super().check_config(cfg, log)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        settings = getattr(self.app, "settings", None)
        self.header_timeout = getattr(settings, "http", HTTPSettings()).header_timeout
        self.head_limit = head_limit(self.cfg)
        self.heads: dict[Any, float] = {}  # connections reading a head -> deadline; insertion order is deadline order
        self.master_gone = False

    def load_wsgi(self) -> None:
        """Tell the app (``environ[HAND_OFF]``) that this worker catches a stream's ``HandOff``."""
        super().load_wsgi()
        self.flwd_app = app = self.wsgi

        def serve(environ: dict[str, Any], start_response: Any) -> Any:
            environ[HAND_OFF] = True
            return app(environ, start_response)

        self.wsgi = serve

    # -- heads, on the poller ----------------------------------------------------

    def enqueue_req(self, conn: Any) -> None:
        """Every way into the pool (accept, keep-alive, read-ahead) passes here: only whole heads go on."""
        # A kept-alive connection's parser may hold bytes read ahead by the previous request.
        buffered = conn.parser.unreader.take_buffered() if conn.parser is not None else b""
        conn.flwd_buffer = bytearray(buffered)
        if head_complete(conn.flwd_buffer):
            self._hand_over(conn)
            return
        conn.sock.setblocking(False)
        self.heads[conn] = time.monotonic() + self.header_timeout
        self.poller.register(conn.sock, EVENT_READ, partial(self.on_head_readable, conn))
        self.on_head_readable(conn, conn.sock)

    def on_head_readable(self, conn: Any, _sock: Any) -> None:
        try:
            data = conn.sock.recv(READ_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:  # the client left
            self._drop(conn)
            return
        conn.flwd_buffer += data
        if head_complete(conn.flwd_buffer):
            self._unwatch(conn)
            self._hand_over(conn)
        elif len(conn.flwd_buffer) > self.head_limit:
            try:
                conn.sock.send(REFUSED)  # best effort: the socket is non-blocking and the answer small
            except OSError:
                pass
            self._drop(conn)

    def _hand_over(self, conn: Any) -> None:
        conn.flwd_head, conn.flwd_buffer = bytes(conn.flwd_buffer), None
        super().enqueue_req(conn)

    def _unwatch(self, conn: Any) -> None:
        self.heads.pop(conn, None)
        try:
            self.poller.unregister(conn.sock)
        except (KeyError, ValueError, OSError):
            pass

    def _drop(self, conn: Any) -> None:
        self._unwatch(conn)
        self.nr_conns -= 1
        conn.close()

    def murder_pending(self) -> None:
        """Also drop the heads whose time is up (called once per loop, running and stopping)."""
        super().murder_pending()
        now = time.monotonic()
        if not self.alive:
            linger = now + STOP_LINGER
            for conn, deadline in self.heads.items():
                self.heads[conn] = min(deadline, linger)  # same value for all: the order stays
        while self.heads:
            conn, deadline = next(iter(self.heads.items()))
            if deadline > now:
                break
            self.log.debug("request head not complete within %gs: closing %s", self.header_timeout, conn.client)
            self._drop(conn)

    # -- on a pool thread ---------------------------------------------------------

    def handle(self, conn: Any) -> Any:
        head = getattr(conn, "flwd_head", None)
        if head is not None:
            conn.flwd_head = None
            conn.sock.setblocking(True)
            conn.init()  # plain HTTP/1.x (check_config): only makes the parser, reads nothing
            conn.parser.unreader.unread(head)
        try:
            return super().handle(conn)
        except HandOff as hand_off:  # the stream's head and first chunk are sent; gunicorn wrote nothing after
            hand_off.start(partial(self.method_queue.defer, self.on_stream_end, conn))
            return HANDED_OFF

    # -- handed-off streams, on the poller ------------------------------------------

    def finish_request(self, conn: Any, fs: Any) -> None:
        if not fs.cancelled() and fs.exception() is None and fs.result() is HANDED_OFF:
            return  # the broadcaster has the connection; on_stream_end closes it (maybe already did)
        super().finish_request(conn, fs)

    def on_stream_end(self, conn: Any, reusable: bool) -> None:
        """The broadcaster wrote a handed-off stream's end (or gave up on its client).

        A whole response leaves the connection as any other does: kept alive for the client's
        next request (its head said so; a client that sends one on it must not be reset), or
        closed.  gunicorn's own ending decides, given the outcome a request thread would return.
        """
        outcome: Future = Future()
        outcome.set_result(reusable)
        super().finish_request(conn, outcome)

    # -- the master ----------------------------------------------------------------

    def is_parent_alive(self) -> bool:
        if super().is_parent_alive():
            return True
        self.on_master_gone()
        return False

    def on_master_gone(self) -> None:
        """Nobody will restart or stop this worker: stop listening now and end the runs ``lost``."""
        if self.master_gone:
            return
        self.master_gone = True
        self.alive = False
        self.log.error("the master process is gone: closing the listening sockets and stopping the runs")
        self.set_accept_enabled(False)
        for listener in self.sockets:
            listener.close()
        for conn in list(self.heads):
            self._drop(conn)
        self.murder_keepalived(force=True)
        engine = engine_of(self)
        if engine is not None:
            engine.abandon(MASTER_GONE)
