"""The callback delivery thread: one per process, woken when a run ends, never in a run's or a request's way.

It claims due deliveries from the store (a lease, atomic across processes and
nodes: :mod:`flwd_server.store.deliveries`), POSTs each run as ``GET
/runs/ID`` shows it, signed (:mod:`.callbacks`), and records every attempt as
an event on the run.  A 2xx answer delivers; anything else - another status,
a redirect (never followed), a refused connection, a timeout - is a failed
attempt, retried after ``callbacks.backoff`` seconds doubled at each attempt
(at most an hour), jittered, until ``callbacks.max_attempts``.  Pending
deliveries live in the database, so a restart only delays them.

A CLI's local run is delivered by the process that runs it (:meth:`adopt`):
such a process claims only its own runs' deliveries, and on closing waits a
bounded time for those that are due; a retry due later stays pending in the
database for a server on it.
"""

from __future__ import annotations

import http.client
import json
import logging
import random
import ssl
import threading
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from .. import __version__
from ..errors import FlwdError, RunNotFound
from ..events.hub import control_only
from ..forksafe import reset_after_fork
from ..models import Event, EventType
from ..store import Store
from ..store.deliveries import Delivery, shown_url
from .callbacks import DEFAULT_PORTS, CallbackPolicy, signature

log = logging.getLogger("flwd.callbacks")

MAX_BACKOFF = 3600.0  # seconds: the longest wait between two attempts
IDLE_POLL = 10.0  # seconds between looks at the table when nothing is due and nothing wakes the thread
MIN_WAIT = 0.05  # never spin on a delivery that is due but leased to another process


def backoff_delay(base: float, attempt: int) -> float:
    """Seconds before the attempt after ``attempt``: exponential, capped, with jitter (half to all of it)."""
    return min(base * 2 ** (attempt - 1), MAX_BACKOFF) * random.uniform(0.5, 1.0)


def post(url: str, body: bytes, headers: dict[str, str], timeout: float) -> tuple[int | None, str | None]:
    """One POST; ``(status, None)`` for any answer, ``(None, reason)`` when there was none. Redirects are not followed."""
    parts = urlsplit(url)
    port = parts.port or DEFAULT_PORTS[parts.scheme.lower()]
    if parts.scheme.lower() == "https":
        conn: http.client.HTTPConnection = http.client.HTTPSConnection(
            parts.hostname or "", port, timeout=timeout, context=ssl.create_default_context()
        )
    else:
        conn = http.client.HTTPConnection(parts.hostname or "", port, timeout=timeout)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    try:
        conn.request("POST", target, body=body, headers=headers)
        return conn.getresponse().status, None
    except TimeoutError:
        return None, f"no answer within {timeout:g}s"
    except (OSError, http.client.HTTPException) as exc:
        return None, f"{type(exc).__name__}: {exc}"[:300]
    finally:
        conn.close()


class CallbackDeliverer:
    def __init__(
        self,
        store: Store,
        policy: CallbackPolicy,
        view: Callable[[str], dict[str, Any]],
        owner: Callable[[], str],
        *,
        local: bool = False,
    ) -> None:
        self.store = store
        self.policy = policy
        self.view = view  # the run as GET /runs/ID shows it
        self.owner = owner
        self.local = local
        settings = policy.settings
        self.lease = 2 * settings.request_timeout + 30  # longer than an attempt can take
        self._reset()
        reset_after_fork(self, "_reset")

    def _reset(self) -> None:
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._wakeup = threading.Event()
        self._attempted = threading.Condition()
        self._stopping = False
        self._adopted: set[str] = set()

    # -- life cycle ------------------------------------------------------------

    def start(self) -> None:
        """Start this process's delivery thread (idempotent; again after a fork)."""
        if self._thread is not None and self._thread.is_alive():
            return
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._stopping = False
                self._thread = threading.Thread(target=self._loop, name="flwd-callbacks", daemon=True)
                self._thread.start()

    def wake(self) -> None:
        self._wakeup.set()

    @control_only
    def on_events(self, events: list[Event]) -> None:
        """The event poller's listener: a run ended (here or anywhere) - its callback may be due."""
        if any(e.type == EventType.RUN_FINISHED.value for e in events):
            self._wakeup.set()

    def adopt(self, run_id: str) -> None:
        """A local run of this process: deliver its callback here (a local process claims nothing else)."""
        self._adopted.add(run_id)
        self._wakeup.set()

    def close(self, drain: float | None = None) -> None:
        """Stop; a local process first waits up to ``drain`` seconds for its runs' due callbacks.

        An attempt under way finishes (its connection has a timeout); what is not due yet stays pending.
        """
        thread = self._thread
        if thread is None or not thread.is_alive():
            return
        if self.local and self._adopted:
            deadline = time.monotonic() + (2 * self.policy.settings.request_timeout + 5 if drain is None else drain)
            with self._attempted:
                while time.monotonic() < deadline and not self.store.deliveries_settled(sorted(self._adopted)):
                    self._attempted.wait(min(0.5, max(0.0, deadline - time.monotonic())))
        self._stopping = True
        self._wakeup.set()
        if thread is not threading.current_thread():
            thread.join(timeout=2 * self.policy.settings.request_timeout + 1)  # connect, then the answer

    # -- the thread ------------------------------------------------------------

    def _loop(self) -> None:
        while not self._stopping:
            self._wakeup.clear()  # before looking: a wake-up from now on is not lost
            try:
                claimed = self._claim()
                for delivery in claimed:
                    self._attempt(delivery)
                    with self._attempted:
                        self._attempted.notify_all()
                if claimed:
                    continue
                wait = self._idle_wait()
            except FlwdError as exc:  # the database, for now: try again in a while
                log.warning("callbacks: %s", exc.detail)
                wait = IDLE_POLL
            except Exception:
                log.exception("callbacks: delivery loop failed")
                wait = IDLE_POLL
            self._wakeup.wait(wait)

    def _claim(self) -> list[Delivery]:
        if self.local and not self._adopted:
            return []
        return self.store.claim_deliveries(
            self.owner(), self.lease, run_ids=sorted(self._adopted) if self.local else None
        )

    def _idle_wait(self) -> float:
        due = self.store.next_delivery_at()
        if due is None:
            return IDLE_POLL
        return min(max(due - time.time(), MIN_WAIT), IDLE_POLL)

    def _attempt(self, delivery: Delivery) -> None:
        settings = self.policy.settings
        status: int | None = None
        if not self.policy.allows(delivery.url):  # removed from the list since the run was submitted
            error = "the URL is no longer under callbacks.allowed_urls"
            self.store.record_attempt(delivery, self.owner(), status=None, error=error, retry_at=None)
            log.warning("callback of run %s given up: %s", delivery.run_id, error, extra={"run_id": delivery.run_id})
            return
        try:
            body = json.dumps({"run": self.view(delivery.run_id)}, ensure_ascii=False).encode()
            headers = {
                "Content-Type": "application/json",
                "User-Agent": f"flwd/{__version__}",
                "X-Flwd-Event": "run.finished",
                "X-Flwd-Delivery": delivery.id,
                "X-Flwd-Signature-256": signature(self.policy.secret(), body),
            }
        except RunNotFound:  # pruned meanwhile (limits.max_run_history): nothing left to send
            self.store.record_attempt(delivery, self.owner(), status=None, error="the run is gone", retry_at=None)
            return
        except FlwdError as exc:  # the signing key cannot be read: this attempt fails, a later one may not
            error = exc.detail
        else:
            status, error = post(delivery.url, body, headers, settings.request_timeout)
        delivered = status is not None and 200 <= status < 300
        retry_at = None
        if not delivered and delivery.attempt < settings.max_attempts:
            retry_at = time.time() + backoff_delay(settings.backoff, delivery.attempt)
        self.store.record_attempt(delivery, self.owner(), status=status, error=error, retry_at=retry_at)
        outcome = "delivered" if delivered else ("failed, will retry" if retry_at else "failed, given up")
        log.log(
            logging.INFO if delivered else logging.WARNING,
            "callback of run %s %s (attempt %d, %s)",
            delivery.run_id,
            outcome,
            delivery.attempt,
            f"HTTP {status}" if status is not None else error,
            extra={
                "event": "callback.delivered" if delivered else "callback.failed",
                "run_id": delivery.run_id,
                "url": shown_url(delivery.url),
                "attempt": delivery.attempt,
                "status": status,
            },
        )
