"""What the WSGI host that loaded ``flwd_server.wsgi:app`` really runs: its request threads.

flwd's own ``threads`` setting sizes ``flwd :serve``'s gunicorn.  Under uWSGI or
mod_wsgi the host decides, and an open event stream holds one of its threads, so
the stream cap (``sse.max_streams``, by default threads - 4) must come from the
host's number or streams take every thread.  uWSGI without threads runs no
Python thread between requests: the runner would never run what it accepts, so
that is refused with the options to add.
"""

from __future__ import annotations

import sys
from typing import Any

from ..config import Settings

UWSGI_WITHOUT_THREADS = (
    "flwd needs request threads and Python threads, and this uWSGI runs neither{reason}: "
    "the runner, the event poller and every open event stream are threads. "
    "Start uWSGI with --threads 8 (or more: each open event stream holds one thread, "
    "and sse.max_streams defaults to threads - 4)."
)


def uwsgi_threads(opt: dict[Any, Any]) -> int:
    """uWSGI's request threads per worker from its options; SystemExit where it runs no Python threads."""

    def value(name: str) -> Any:
        raw = opt.get(name, opt.get(name.encode()))
        if isinstance(raw, list):  # an option given twice
            raw = raw[-1]
        return raw.decode() if isinstance(raw, bytes) else raw

    try:
        threads = int(value("threads") or 1)
    except ValueError:
        threads = 1
    if threads < 2:
        enabled = value("enable-threads") not in (None, False)
        reason = " (only --enable-threads: one request thread)" if enabled else " (no --threads)"
        raise SystemExit(UWSGI_WITHOUT_THREADS.format(reason=reason))
    return threads


def host_threads() -> int | None:
    """The request threads per process of the host running this process, if it is uWSGI or mod_wsgi."""
    try:
        import uwsgi  # built into the uwsgi binary; not importable elsewhere
    except ImportError:
        uwsgi = None
    if hasattr(uwsgi, "opt"):
        return uwsgi_threads(uwsgi.opt)
    mod_wsgi = sys.modules.get("mod_wsgi")  # put there by Apache's mod_wsgi (PyPI's package has no thread count)
    threads = getattr(mod_wsgi, "threads_per_process", None)
    if isinstance(threads, int) and threads > 0:
        return threads
    return None


def adapt(settings: Settings) -> Settings:
    """``settings`` with ``threads`` set to what the host really runs (unchanged outside uWSGI and mod_wsgi)."""
    threads = host_threads()
    if threads is None or threads == settings.threads:
        return settings
    return settings.replace(threads=threads)
