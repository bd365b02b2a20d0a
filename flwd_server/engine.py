"""The one facade both the web layer and the CLI call.

It wires settings, store, sources, planner, policy and runner together and
knows nothing of HTTP.  Threads (the runner, the event poller) start on first
use in the process that needs them, so an engine built before a fork is safe.
"""

from __future__ import annotations

import hashlib
import json
import logging
import secrets
import threading
import time
from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from typing import IO, Any

from . import forksafe
from .auth.bearer import Authenticator
from .auth.scopes import Scope, ticket_scopes
from .catalog import Catalog
from .config import Settings
from .containers.support import ContainerSupport
from .errors import RunNotFound, Unauthenticated, Unavailable
from .events.broadcast import Broadcaster
from .events.hub import EventHub
from .forksafe import reset_after_fork
from .metrics import Metrics
from .metrics import install as install_metrics
from .models import Containment, EventType, Job, Plan, Principal, Run
from .planner import Planner, PlanRequest
from .policy import log_decision
from .runs.approvals import Approvals
from .runs.callbacks import CallbackPolicy
from .runs.cgroups import discover as discover_cgroups
from .runs.delivery import CallbackDeliverer
from .runs.runner import Runner
from .runs.submission import Submitter
from .sources import LocalSource, Source
from .sources.registry import SourceRegistry
from .store import Store, open_store
from .store.artifacts import Artifact, BlobDir, open_artifact, run_artifacts
from .store.export import ExportFilter, export_lines
from .store.retention import Retention

log = logging.getLogger("flwd.engine")


def _ticket_digest(ticket: str) -> str:
    return hashlib.sha256(ticket.encode()).hexdigest()


BUNDLED_SOURCE = "examples"


def _token_verifier(settings: Settings) -> Any:
    """The JWT verifier, when the config asks for one (PyJWT and cryptography load only then)."""
    auth = settings.auth
    if not (auth.issuer or auth.audience or auth.jwk_file):
        return None
    from .auth.tokens import token_verifier

    return token_verifier(auth)


def bundled_root() -> Path:
    return Path(str(resources.files("flwd_server") / "bundled"))


class Engine:
    def __init__(self, settings: Settings, *, store: Store | None = None, local_affinity: bool = False) -> None:
        self.settings = settings
        self.store = store or open_store(settings)
        self.store.migrate()
        self.containers = ContainerSupport(settings, self.store.digest_key, lambda: self.runner.owner)
        self._swept = False
        reset_after_fork(self, "_forget_sweep")
        self.catalog = Catalog()
        self.registry = SourceRegistry(
            self.store, settings, self.catalog, self.make_source, bundled=self._configured_sources()
        )
        self.catalog.before_read = self.registry.refresh
        self.registry.register_configured(sync_new=local_affinity)
        self.hub = EventHub(self.store, poll_interval=settings.sse.poll_interval)
        self.broadcaster = Broadcaster(
            self.hub,
            heartbeat=settings.sse.heartbeat,
            max_duration=settings.sse.max_duration,
            is_closing=lambda: self.closing,
        )
        cgroups = discover_cgroups() if settings.policy.cgroups else None
        containment = cgroups.containment() if cgroups is not None and cgroups.usable else Containment("subreaper")
        self.planner = Planner(
            self.catalog,
            settings,
            self.store.digest_key,
            runtime=self.container_runtime,
            verify_signature=self.containers.verify_image,
            containment=containment,
        )
        self.runner = Runner(
            self.store,
            self.hub,
            self.planner,
            settings,
            affinity_only=local_affinity,
            container_executor=self.containers.run_step,
            cgroups=cgroups,
        )
        self.authenticator = Authenticator(settings.dev, verify_jwt=_token_verifier(settings))
        install_metrics(self.store)
        self.metrics = Metrics(self.store, settings.limits.max_run_history)
        self.blobs = BlobDir(settings.resolved_artifacts_dir)
        self.retention = Retention(self.store, settings.limits.max_run_history, self.blobs)
        self.hub.add_listener(self.retention.on_events)
        self.callback_policy = CallbackPolicy(settings.callbacks)
        self.callbacks = CallbackDeliverer(
            self.store, self.callback_policy, self.run_view, lambda: self.runner.owner, local=local_affinity
        )
        self.hub.add_listener(self.callbacks.on_events)
        self.local_affinity = local_affinity
        self.submitter = Submitter(
            self.store,
            self.planner,
            self.runner,
            settings,
            self.callback_policy,
            self.callbacks,
            local_affinity=local_affinity,
            closing=lambda: self.closing,
            start=self.start,
        )
        self.approvals = Approvals(
            self.store, self.planner, self.catalog, self.runner, local_affinity=local_affinity, start=self.start
        )
        self._started = False  # start() ran: only then is a close a shutdown worth a log line
        self.closing = False
        self._drain_deadline: float | None = None
        self._jobs_cache: tuple[Any, str] | None = None

    # -- wiring ----------------------------------------------------------------

    def _configured_sources(self) -> list[Source]:
        """The bundled example source; the config file's sources live in the database (``registry``)."""
        sources: list[Source] = []
        if self.settings.bundled_jobs:
            sources.append(
                LocalSource(
                    BUNDLED_SOURCE, {"type": "local", "path": str(bundled_root())}, self.settings.limits.default_timeout
                )
            )
        return sources

    def make_source(self, spec: dict[str, Any]) -> Source:
        """Build (and validate) a source object; nothing is fetched or written here."""
        if spec["type"] == "local":
            return LocalSource(spec["name"], spec, self.settings.limits.default_timeout)
        if spec["type"] == "git":
            from .sources.git import GitSource  # GitPython loads only for git sources

            return GitSource(
                spec["name"],
                spec,
                data_dir=self.settings.resolved_data_dir,
                git=self.settings.git,
                default_timeout=self.settings.limits.default_timeout,
            )
        if spec["type"] == "oci":
            from .sources.oci import OciSource

            box = self.settings.container
            return OciSource(
                spec["name"],
                spec,
                registry=self.containers.registry,
                verifier=self.containers.verifier,
                allowed_registries=box.allowed_registries,
                verify_signatures=box.verify_signatures,
                root=self.settings.resolved_data_dir / "addons",
                default_timeout=self.settings.limits.default_timeout,
            )
        raise Unavailable(f"source type {spec['type']!r} is not supported by this build")

    def container_runtime(self) -> tuple[str | None, str | None]:
        """``(engine, None)`` when a container engine answers, else ``(None, reason)``."""
        return self.containers.status()

    def start(self) -> None:
        """Start the event poller and the runner in this process (idempotent).

        Every entry into the engine passes here first (the web app calls it
        before each request), so this is where a process forked without
        at-fork hooks (uWSGI) forgets its parent's threads and connections.
        """
        forksafe.check()
        self._started = True
        self.hub.start()
        self.runner.start()
        self.callbacks.start()
        if not self._swept and not self.local_affinity and self.settings.container.runtime != "none":
            self._swept = True  # containers a crashed worker left behind go, once per server process
            threading.Thread(
                target=self.containers.sweep_orphans,
                args=(self.store, self.runner.owner),
                name="flwd-container-sweep",
                daemon=True,
            ).start()

    def park(self) -> None:
        """Leave no thread running in this process until the engine is next used.

        A host that builds the app and then forks in C (uWSGI's preforking) runs
        no at-fork hooks, and a thread alive at that fork can leave the child's
        interpreter locked: the store's writer, started by the sources written
        at construction, stops here and starts again on the next write.
        """
        self.store.park_writer()

    def _forget_sweep(self) -> None:
        self._swept = False

    def begin_shutdown(self, grace: float | None = None) -> None:
        """SIGTERM: take no new runs (503) and claim no queued ones, end event streams, start the grace clock.

        Running runs go on; :meth:`close` gives them what is left of ``grace``
        (``shutdown_grace`` by default), counted from this call.
        """
        grace = self.settings.shutdown_grace if grace is None else grace
        deadline = time.monotonic() + grace
        if self._drain_deadline is None or deadline < self._drain_deadline:
            self._drain_deadline = deadline
            if self._started:  # an engine that never ran anything (start-up's preparation) has no shutdown to tell
                log.info(
                    "shutting down: no new runs; %d running get %gs to finish",
                    self.runner.active_count(),
                    grace,
                    extra={"event": "server.shutdown", "running": self.runner.active_count(), "grace": grace},
                )
        self.closing = True
        self.runner.stop_claiming()
        self.hub.close(wait=False)  # may run in a signal handler: the final close() waits

    def abandon(self, reason: str) -> None:
        """The process that supervised this one is gone: no grace; running runs stop now and end ``lost``."""
        self.begin_shutdown(grace=0)
        self.runner.abandon(reason)

    def close(self, grace: float | None = None) -> None:
        """Stop: running runs get until the grace deadline, then are cancelled with a reason."""
        self.closing = True
        if grace is not None or self._drain_deadline is None:
            self.begin_shutdown(grace)
        self.runner.shutdown(self.settings.shutdown_grace if grace is None else grace, deadline=self._drain_deadline)
        self.callbacks.close()  # after the runs: their ends make callbacks due; a local process delivers its own
        self.hub.close()
        self.containers.close()
        self.store.close()

    # -- sources -----------------------------------------------------------------

    def sources(self) -> list[dict[str, Any]]:
        return self.registry.describe_all()

    def source(self, name: str) -> dict[str, Any]:
        return self.registry.describe_one(name)

    def add_source(self, spec: dict[str, Any], principal: Principal) -> dict[str, Any]:
        return self.registry.add(spec, principal.subject)

    def remove_source(self, name: str, principal: Principal) -> None:
        self.registry.remove(name, principal.subject)

    def sync_source(self, name: str, principal: Principal) -> dict[str, Any]:
        return self.registry.sync(name, principal.subject)

    def prepare_sources(self) -> None:
        """Server start (before workers fork): config sources stored, fetched; stale ones dropped."""
        self.registry.register_configured(sync_all=True, prune=True)

    # -- jobs and plans --------------------------------------------------------

    def jobs(self, source: str | None = None) -> list[Job]:
        return self.catalog.list_jobs(source)

    def jobs_document(self, source: str | None = None) -> str:
        """``{"jobs": [...]}`` as JSON, rendered once per state of the sources (GET /jobs)."""
        snapshots = self.catalog.snapshots(source)
        key = (source, tuple((snap.name, snap.revision, id(snap)) for snap in snapshots))
        cached = self._jobs_cache
        if cached is not None and cached[0] == key:
            return cached[1]
        jobs = [snap.jobs[name].summary() for snap in snapshots for name in sorted(snap.jobs)]
        text = json.dumps({"jobs": jobs}, ensure_ascii=False)
        self._jobs_cache = (key, text)
        return text

    def job(self, name: str, source: str | None = None) -> Job:
        return self.catalog.resolve(name, source)

    def plan(self, request: PlanRequest, principal: Principal) -> Plan:
        plan = self.planner.plan(request, principal)
        for decision in plan.decisions:
            log_decision(None, decision, job=plan.job.qualified_name)
        return plan

    # -- runs --------------------------------------------------------------------

    def submit(
        self,
        request: PlanRequest,
        principal: Principal,
        idempotency: tuple[str, str] | None = None,
        *,
        runner: str | None = None,
    ) -> tuple[Run, bool]:
        """Queue a run (or record it rejected); returns ``(run, replayed)`` (runs/submission.py).

        ``idempotency`` is ``(key, body_hash)``: the same key and body replay
        the first answer.  ``runner`` is the owner id of another process that
        is to run it (a detached CLI run's background runner); only that
        process claims it.
        """
        return self.submitter.submit(request, principal, idempotency, runner=runner)

    def runs(self, **filters: Any) -> tuple[list[Run], int | None]:
        runs, cursor = self.store.list_runs(**filters)
        return self.placed(runs), cursor

    def placed(self, runs: list[Run]) -> list[Run]:
        """The runs, each waiting one with its ``queue``: its place in line and why (store/queue.py)."""
        return self.store.queue_of(runs, self.settings.limits.max_concurrent_runs)

    def run(self, run_id: str, principal: Principal | None = None) -> Run:
        """One run; with ``principal``, a run of a job its ``runs:read`` does not cover is a 404 (hides it exists)."""
        run = self.store.get_run(run_id)
        if principal is not None and not principal.allows(Scope.RUNS_READ, run.source, run.job):
            raise RunNotFound(f"no run with id {run_id!r}")
        return run

    def run_view(self, run_id: str, base_url: str = "", principal: Principal | None = None) -> dict[str, Any]:
        """The run as ``GET /runs/ID`` shows it; a callback POSTs exactly this (links relative to the server's root).

        Unlike the lists, one run also names its artifacts with their digests (a query of its own);
        a waiting run has its place in the queue.
        """
        view = self.placed([self.run(run_id, principal)])[0].to_dict(base_url)
        view["artifacts"] = [artifact.to_dict() for artifact in run_artifacts(self.store, run_id)]
        return view

    def cancel(self, run_id: str, principal: Principal) -> Run:
        current = self.store.get_run(run_id)
        principal.require(Scope.RUNS_WRITE, current.source, current.job)
        run = self.store.request_cancel(run_id, principal.subject)
        self.runner.wake()
        return run

    def approve(self, run_id: str, principal: Principal, digest: str) -> Run:
        """One approval of a run awaiting it (runs/approvals.py); the last one releases or rejects it."""
        return self.approvals.approve(run_id, principal, digest)

    def deny(self, run_id: str, principal: Principal, reason: str) -> Run:
        return self.approvals.deny(run_id, principal, reason)

    def artifacts(self, run_id: str, principal: Principal | None = None) -> list[Artifact]:
        self.run(run_id, principal)  # 404 for an unknown run
        return run_artifacts(self.store, run_id)

    def artifact(self, run_id: str, path: str, principal: Principal | None = None) -> tuple[Artifact, IO[bytes]]:
        """One artifact and its file, open (the caller closes it); the path is looked up, never joined."""
        self.run(run_id, principal)
        return open_artifact(self.store, self.blobs, run_id, path)

    # -- stream tickets (browsers' EventSource cannot send Authorization) ---------

    def issue_stream_ticket(self, principal: Principal, run_id: str | None = None) -> dict[str, Any]:
        """A short-lived ticket that opens one event stream without a header, as often as needed until it expires.

        Reusable because EventSource reconnects by itself with the same URL; read-only (the asker's ``runs:read``,
        narrowed or not, and ``sources:read``) and bound
        to its run, so a leaked one reads that run's events (or, without a run, every event) for ``ticket_ttl``
        seconds at most, and writes nothing.
        """
        if run_id is not None:
            self.run(run_id, principal)  # 404 for an unknown run, or one its runs:read does not cover
        ticket = secrets.token_urlsafe(32)
        ttl = self.settings.sse.ticket_ttl
        scopes = " ".join(sorted(ticket_scopes(principal.scopes)))
        self.store.create_ticket(_ticket_digest(ticket), principal.subject, run_id, time.time() + ttl, scopes)
        return {"ticket": ticket, "expires_in": ttl, "run_id": run_id}

    def redeem_stream_ticket(self, ticket: str, run_id: str | None) -> Principal:
        row = self.store.find_ticket(_ticket_digest(ticket)) if 16 <= len(ticket) <= 128 else None
        if row is None or row[2] < time.time():
            raise Unauthenticated("the stream ticket is unknown or expired; ask POST /stream-tickets for a new one")
        subject, bound_run, _, scopes = row
        if bound_run is not None and bound_run != run_id:
            raise Unauthenticated("this stream ticket was issued for another run")
        return Principal(subject, frozenset(scopes.split() if scopes is not None else (Scope.RUNS_READ.value,)))

    def export(self, filters: ExportFilter) -> Iterator[bytes]:
        """The NDJSON audit export (see :mod:`flwd_server.store.export`), streamed."""
        return export_lines(self.store, filters)

    def terminal_event_id(self, run_id: str) -> int | None:
        """Id of the run's ``run.finished`` event, or None while it runs."""
        row = (
            self.store.reader()
            .execute("SELECT max(id) FROM events WHERE run_id = ? AND type = ?", (run_id, EventType.RUN_FINISHED.value))
            .fetchone()
        )
        return row[0] if row else None
