"""``flwd :serve``: gunicorn with gthread workers, embedded in-process.

The master prepares the database (migrations, runs lost by a previous
server) and opens nothing that survives the fork.  Each worker builds its own
app and engine after the fork; threads (runner, event poller) start in
``post_worker_init``.  On SIGTERM a worker stops taking runs and ends its event
streams at once, lets running jobs finish within ``shutdown_grace``, then
cancels the rest (``worker_exit``).
"""

from __future__ import annotations

import gc
import logging
import os
import resource
import signal
import socket
from typing import Any

from gunicorn import glogging
from gunicorn.app.base import BaseApplication

from ..auth.tokens import require_auth
from ..config import Settings, is_loopback_bind, parse_bind
from ..engine import Engine
from ..logs import JsonFormatter, configure_logging
from ..store import open_store
from ..store.owners import recover_lost_runs
from .app import create_app
from .worker import FlwdWorker, engine_of

log = logging.getLogger("flwd.serve")


def _post_worker_init(worker: Any) -> None:
    engine = engine_of(worker)
    if engine is None:
        return
    engine.start()
    previous = signal.getsignal(signal.SIGTERM)

    def on_term(signum: int, frame: Any) -> None:
        engine.begin_shutdown()
        if callable(previous):
            previous(signum, frame)

    signal.signal(signal.SIGTERM, on_term)


def _pre_fork(server: Any, worker: Any) -> None:
    """Keep the master's objects out of the workers' garbage collections (``gc.freeze``).

    A worker inherits the master's memory copy-on-write; a full collection in
    the worker writes to every object it walks, which copies each page it
    touches (about 10 MB a worker, seen as PSS).  Frozen objects are never
    walked, so those pages stay shared.
    """
    gc.freeze()


def _worker_int(worker: Any) -> None:
    """SIGINT/SIGQUIT is a quick stop: cancel running runs now instead of after the grace."""
    engine = engine_of(worker)
    if engine is not None:
        engine.begin_shutdown(grace=0)


def _when_ready(server: Any) -> None:
    """The master listens now: only now is it true that flwd serves (a bind that fails never says so)."""
    settings = server.app.settings
    log.info(
        "flwd serving on %s (profile %s, %d workers x %d threads and %d event streams, database %s%s)",
        settings.bind,
        settings.default_profile,
        settings.workers,
        settings.threads,
        settings.sse_max_streams,
        settings.database_label,
        ", --dev: token dev-token" if settings.dev else "",
        extra={"event": "serve.ready", "bind": settings.bind},
    )


def _worker_exit(server: Any, worker: Any) -> None:
    engine = engine_of(worker)
    if engine is not None:
        engine.close()


class JsonLogger(glogging.Logger):
    """gunicorn's own lines (start-up, worker life cycle, errors) as JSON, like flwd's.

    flwd writes its own access line per request (with the request id), so
    gunicorn's access log stays off; if it is switched on, it too is JSON
    with the path only: never the query string or a header.
    """

    def setup(self, cfg: Any) -> None:
        super().setup(cfg)
        for logger in (self.error_log, self.access_log):
            for handler in logger.handlers:
                handler.setFormatter(JsonFormatter())

    def access(self, resp: Any, req: Any, environ: dict[str, Any], request_time: Any) -> None:
        if not self.access_log_enabled:
            return
        status = getattr(resp, "status_code", None) or str(getattr(resp, "status", "")).split(" ")[0]
        self.access_log.info(
            "%s %s %s",
            req.method,
            req.path,
            status,
            extra={
                "event": "http.access",
                "method": req.method,
                "path": req.path,
                "status": status,
                "duration_ms": round(request_time.total_seconds() * 1000, 3),
                "request_id": dict(resp.headers).get("X-Request-ID"),
            },
        )


class FlwdServer(BaseApplication):
    def __init__(self, settings: Settings) -> None:
        self.settings = settings.with_parked_streams()  # FlwdWorker hands streams to the broadcaster
        super().__init__()

    def load_config(self) -> None:
        s = self.settings
        host_port = s.bind
        options: dict[str, Any] = {
            "bind": [host_port],
            "workers": s.workers,
            "threads": s.threads,
            "worker_class": FlwdWorker,  # gthread, with request heads read without a thread
            "worker_connections": worker_connections(s),
            "timeout": 30,  # gthread: a heartbeat of the worker loop, not a request timeout
            # A worker's runs get shutdown_grace from SIGTERM, then ~2 s to die (SIGTERM, SIGKILL of
            # their process groups) and up to 15 s to record their end: the master must wait that long.
            "graceful_timeout": graceful_timeout(s.shutdown_grace),
            "keepalive": 5,
            "max_requests": 0,  # recycling a worker would interrupt the runs it executes
            "preload_app": False,
            "accesslog": None,
            "errorlog": "-",
            "loglevel": s.log_level,
            "proc_name": "flwd",
            "post_worker_init": _post_worker_init,
            "worker_exit": _worker_exit,
            "worker_int": _worker_int,
            "pre_fork": _pre_fork,
            "when_ready": _when_ready,
            "logger_class": JsonLogger,
            "limit_request_line": 8190,
            "limit_request_fields": 100,
            "limit_request_field_size": 16380,
        }
        if "control_socket_disable" in self.cfg.settings:  # gunicorn >= 25: no runtime control socket
            options["control_socket_disable"] = True
        for key, value in options.items():
            self.cfg.set(key, value)

    def load(self) -> Any:
        return create_app(self.settings)


def worker_connections(settings: Settings) -> int:
    """Connections a worker holds at once: its open streams (no thread each) and as many again for the rest."""
    return settings.sse_max_streams + max(1000, settings.threads * 4)


def raise_open_files_limit(settings: Settings) -> int:
    """Raise this process's open-file soft limit to the hard limit (the workers inherit it); the new soft limit.

    A worker holds up to ``worker_connections`` sockets besides its database and
    log files, more than the common soft limit of 1,024.  A hard limit below
    that is said once, with the figure: streams past it fail to connect.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
            soft = wanted
        except (ValueError, OSError):  # an infinite hard limit above fs.nr_open: keep what we have
            pass
    needed = worker_connections(settings) + 256
    log.info(
        "open files: soft limit %s (hard %s); a worker may need %d",
        "unlimited" if soft == resource.RLIM_INFINITY else soft,
        "unlimited" if hard == resource.RLIM_INFINITY else hard,
        needed,
        extra={"event": "serve.open_files", "soft": soft, "hard": hard, "needed": needed},
    )
    if soft != resource.RLIM_INFINITY and soft < needed:
        log.warning(
            "the open-file hard limit (%d) is below what a worker may hold (%d): raise it (LimitNOFILE=, ulimit -Hn) "
            "or lower sse.max_streams",
            hard,
            needed,
            extra={"event": "serve.open_files_low", "soft": soft, "needed": needed},
        )
    return soft


def graceful_timeout(shutdown_grace: float) -> int:
    """Seconds gunicorn's master waits for a stopping worker before it kills it."""
    return int(shutdown_grace) + 20


def prepare_database(settings: Settings) -> list[str]:
    """Migrate and end the runs a previous server left ``running`` (their processes are gone)."""
    store = open_store(settings)
    store.migrate()
    try:
        return recover_lost_runs(
            store, reason="the server stopped while it ran (found at start-up)", timeout=settings.liveness_timeout
        )
    finally:
        store.close()


def prepare_sources(settings: Settings) -> None:
    """Store the config file's sources and fetch its git sources once, before the workers fork."""
    engine = Engine(settings)
    try:
        engine.prepare_sources()
    finally:
        engine.close(grace=0)


def warn_if_exposed(settings: Settings) -> None:
    """Say it loudly when ``--dev`` (a public, fixed token) listens beyond loopback."""
    if settings.dev and not is_loopback_bind(settings.bind):
        for _ in range(3):
            log.warning(
                "--dev on %s: anyone who can reach this address can run jobs with the public dev-token. "
                "Bind 127.0.0.1 or drop --dev.",
                settings.bind,
                extra={"event": "serve.dev_exposed", "bind": settings.bind},
            )


def check_bind(settings: Settings) -> None:
    """Fail at once, saying why, if the address cannot be listened on (gunicorn would retry for 5 s, then exit).

    Bound with ``SO_REUSEADDR`` as gunicorn binds, then closed: an address in use,
    one this host does not have, or a port below 1024 without the right are caught.
    Under systemd socket activation (``LISTEN_FDS``) the socket is handed over: nothing to check.
    """
    if os.environ.get("LISTEN_FDS"):
        return
    host, port = parse_bind(settings.bind)
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind(address)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        log.error(
            "cannot listen on %s: %s",
            settings.bind,
            reason,
            extra={"event": "serve.bind_failed", "bind": settings.bind, "reason": reason},
        )
        raise SystemExit(1) from None


def serve(settings: Settings) -> None:
    configure_logging(settings.log_level)
    require_auth(settings)
    warn_if_exposed(settings)
    check_bind(settings)
    lost = prepare_database(settings)
    if lost:
        log.warning("%d runs were left running by a previous server and are now lost: %s", len(lost), ", ".join(lost))
    prepare_sources(settings)
    raise_open_files_limit(settings.with_parked_streams())
    FlwdServer(settings).run()
