"""The pool that executes runs: claims from the store, runs steps, reports through events.

One :class:`Runner` per process.  Its thread pool and dispatcher thread are
created on first use *in the process that uses them* (never before a fork).
The database claim, not the pool size, enforces ``max_concurrent_runs``
across every process; the pool is sized to the same number so a single
process can use the whole allowance.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

from ..config import Settings
from ..errors import RunNotFound, StorageError, Unavailable
from ..events.hub import EventHub
from ..forksafe import reset_after_fork
from ..models import Event, EventType, RunStatus
from ..planner import Planner
from ..store import Store
from ..store.owners import HOSTNAME, owner_id, recover_lost_runs
from ..store.queries import ClaimedRun
from .cgroups import CgroupLayout, GroupPool, base_name, sweep_leftovers
from .execution import ActiveRun, RunExecutor
from .host_executor import StepOutcome
from .reaper import Subreaper
from .workdirs import WorkDirPool

log = logging.getLogger("flwd.runner")

HEARTBEAT_EVERY = 2.0
SWEEP_EVERY = 3.0
HOUSEKEEP_EVERY = 10.0
# How long a process leaves a claimable run it has no reason to claim (below) to the process that has
# one, before claiming it itself: the submitter may be slow or full, or not claim at all (draining).
HANDOFF_GRACE = 0.1
# Claims a process tries for the slots its own runs freed, while runs are queued: the first can come
# before the run's end is committed (PostgreSQL's claims do not queue behind the writer) and take nothing.
FREED_TRIES = 2
# Wake-ups without a reason come with every run.queued and run.finished batch (hundreds a second under
# load); they read what a claim would take at most this often (a read is three statements).
READ_EVERY = 0.05


class Runner:
    def __init__(
        self,
        store: Store,
        hub: EventHub,
        planner: Planner,
        settings: Settings,
        *,
        affinity_only: bool = False,
        container_executor: Callable[..., StepOutcome] | None = None,
        cgroups: CgroupLayout | None = None,
    ) -> None:
        self.cgroups = cgroups if cgroups is not None and cgroups.usable else None
        self.cgroup_base = base_name(store.label)
        self.store = store
        self.hub = hub
        self.planner = planner
        self.executor = RunExecutor(store, planner, settings, container_executor)
        self.settings = settings
        self.affinity_only = affinity_only
        self._lock = threading.Lock()
        self._reset()
        hub.add_listener(self._on_events, control_only=True)  # run.* events only: no output line reaches it
        reset_after_fork(self, "_reset")

    def _reset(self) -> None:
        self.owner = owner_id()
        self._pool: ThreadPoolExecutor | None = None
        self._dispatcher: threading.Thread | None = None
        self._wakeup = threading.Event()
        self._claim_due = True  # claim at the next wake-up: wake() was called, or start()
        self._freed = 0  # slots our ended runs freed that no claim has refilled yet
        self._freed_tries = 0  # empty claims left before those slots are left to anyone (FREED_TRIES)
        self._freed_lock = threading.Lock()  # pool threads add to _freed, the dispatcher takes from it
        self._deferred: tuple[str, float] | None = None  # a claimable run left to another process, since when
        self._next_read = 0.0  # a wake-up without a reason reads the queue no sooner (READ_EVERY)
        self._read_skipped = False
        self.claims = [0, 0]  # claim transactions, and those that took nothing (docs/performance.rst)
        self._peers = 1  # live runner processes sharing the database, this one included (read at each sweep)
        self._active: dict[str, ActiveRun] = {}
        self._futures: set[Future] = set()
        self._lock = threading.Lock()
        self._claim_lock = threading.Lock()
        self._draining = False
        self._stopped = False
        self.reaper: Subreaper | None = None  # this process's, where no cgroup can be made (start())
        self.groups: GroupPool | None = None  # this process's run cgroups (start())
        self.workdirs: WorkDirPool | None = None  # this process's run directories (start())

    # -- life cycle ------------------------------------------------------------

    def start(self) -> None:
        """Start the pool and dispatcher in this process (again after a fork)."""
        if self.started:
            return
        with self._lock:
            if self._dispatcher is not None and self._dispatcher.is_alive():
                return
            self.hub.start()
            try:
                self.store.register_owner(self.owner, HOSTNAME, os.getpid())
            except StorageError as exc:  # e.g. a disk gone read-only: the heartbeat registers us once it can
                log.error("could not register this process as a run owner: %s; the heartbeat retries", exc.detail)
            if self.reaper is None:  # also with cgroups: it reaps the zombies of killed steps
                self.reaper = Subreaper()
            if self.cgroups is not None and self.groups is None:
                self.groups = GroupPool(self.cgroups, self.cgroup_base, self.reaper)
            if self.workdirs is None:
                self.workdirs = WorkDirPool(self.settings.resolved_data_dir / "work")
                self.workdirs.sweep()
            self._sweep_leftovers()
            self._pool = ThreadPoolExecutor(
                max_workers=self.settings.limits.max_concurrent_runs, thread_name_prefix="flwd-run"
            )
            self._claim_due = True  # whatever waits already: nobody else may have a reason to claim it
            self._dispatcher = threading.Thread(target=self._dispatch_loop, name="flwd-dispatcher", daemon=True)
            self._dispatcher.start()

    @property
    def started(self) -> bool:
        return self._dispatcher is not None and self._dispatcher.is_alive()

    @property
    def draining(self) -> bool:
        return self._draining

    def wake(self) -> None:
        """Claim at once: this process queued, released or cancelled a run."""
        self._claim_due = True
        self._wakeup.set()

    def active_count(self) -> int:
        return len(self._active)

    def stop_claiming(self) -> None:
        """Claim no more queued runs (they stay queued for another process or the next start)."""
        self._draining = True

    def shutdown(
        self, grace: float | None = None, reason: str = "the server is shutting down", deadline: float | None = None
    ) -> None:
        """Stop claiming; give running runs ``grace`` seconds (or until the monotonic ``deadline``), then cancel them with ``reason``."""
        if not self.started:
            return
        grace = self.settings.shutdown_grace if grace is None else grace
        self._draining = True
        deadline = time.monotonic() + grace if deadline is None else deadline
        while self._active and time.monotonic() < deadline:
            time.sleep(0.05)
        for active in list(self._active.values()):
            if not active.cancel.is_set():  # a run already stopped (cancelled, abandoned) keeps its reason
                active.reason = f"{reason}; it did not finish within the {grace:g}s grace period (shutdown_grace)"
                active.cancel.set()
        stop_deadline = time.monotonic() + 15
        while self._active and time.monotonic() < stop_deadline:
            time.sleep(0.05)
        with self._claim_lock:  # no claim is half done when the pool goes
            self._stopped = True
        self._wakeup.set()
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
        if self.groups is not None:
            self.groups.close()
        if self.reaper is not None:
            self.reaper.close()
        if self.workdirs is not None:
            self.workdirs.close()
        self.groups = self.reaper = self.workdirs = None  # a later start() makes new ones
        with contextlib.suppress(Exception):
            self.store.unregister_owner(self.owner)
        log.info("runner %s: %d claim transactions, %d of them took nothing", self.owner, *self.claims)

    def abandon(self, reason: str) -> None:
        """Stop every running run now; each ends ``lost`` with ``reason``, as if the process had died."""
        self._draining = True
        for active in list(self._active.values()):
            active.status, active.reason = RunStatus.LOST.value, reason
            active.cancel.set()

    # -- dispatch --------------------------------------------------------------

    def _on_events(self, events: list[Event]) -> None:
        for event in events:
            if event.type in (EventType.RUN_QUEUED.value, EventType.RUN_FINISHED.value, EventType.RUN_APPROVED.value):
                self._wakeup.set()
            elif event.type == EventType.RUN_CANCEL_REQUESTED.value and event.run_id in self._active:
                active = self._active[event.run_id]
                active.reason = event.data.get("reason") or f"cancelled by {event.data.get('by', 'a client')}"
                active.cancel.set()

    def _dispatch_loop(self) -> None:
        next_beat = next_sweep = 0.0
        next_housekeeping = time.monotonic() + HOUSEKEEP_EVERY
        while not self._stopped:
            self._wakeup.wait(timeout=self._next_wait(time.monotonic()))
            self._wakeup.clear()
            now = time.monotonic()
            try:
                if now >= next_beat:
                    if not self.store.heartbeat(self.owner) and not self._stopped:  # stopping: we removed it
                        self._declared_dead()
                    next_beat = now + HEARTBEAT_EVERY
                if now >= next_sweep:
                    if recover_lost_runs(self.store, me=self.owner, timeout=self.settings.liveness_timeout):
                        self._sweep_leftovers()
                        self._claim_due = True  # their slots are free: nobody else has a reason to claim
                    if self.reaper is not None:
                        self.reaper.reap()
                    self._check_cancellations()
                    self.store.expire_approvals(self.settings.policy.approval_timeout)
                    self._count_peers()
                    next_sweep = now + SWEEP_EVERY
                if now >= next_housekeeping:
                    self.housekeeping()
                    next_housekeeping = now + HOUSEKEEP_EVERY
                if not self._draining and (want := self._worth_claiming(now)):
                    self._claim(want)
            except StorageError as exc:  # a full or read-only disk: expected, said in one line
                log.error("dispatcher: %s; retrying", exc.detail)
                time.sleep(0.5)
            except Unavailable:  # the store closed under a last iteration: the process is stopping
                if self._stopped:
                    return
                time.sleep(0.5)
            except Exception:  # the dispatcher must survive a bad moment
                log.exception("dispatcher iteration failed; retrying")
                time.sleep(0.5)

    def _next_wait(self, now: float) -> float:
        """How long the dispatcher sleeps unless woken: a second, or until a deferral's grace has
        passed and a read of the queue is due (never 0 for a deferral it will not act on: a spin)."""
        timeout = 1.0
        if self._deferred is not None and not self._draining:
            timeout = min(timeout, max(0.0, max(self._deferred[1] + HANDOFF_GRACE, self._next_read) - now))
        if self._read_skipped:  # once: an iteration that does not reach the read does not ask again
            timeout = min(timeout, max(0.0, self._next_read - now))
            self._read_skipped = False
        return timeout

    def _worth_claiming(self, now: float) -> int:
        """How many runs this wake-up should claim (0: none): a claim is a write, and one that takes nothing is waste.

        Every process is woken by every ``run.queued`` and ``run.finished`` (the event poller),
        but only a process with a reason claims at once: the one that queued, released or
        cancelled a run (``wake()``: as many as it has room for), or whose own runs ended (as
        many as ended, if a run is queued: one statement first, usually none is).  Refilling only its own
        slots, and no process claiming past an even share of ``max_concurrent_runs`` for a reason
        (the rest is left to the fallback below), keeps the runs spread over the processes: a
        process that took every free slot would end up with all of them, and one process's
        Python cannot run what two can.  A PostgreSQL claim does not queue behind the writer and can come before the run's
        end is committed, so that reason holds for ``FREED_TRIES`` claims that take nothing.
        Any other wake-up reads (at most every ``READ_EVERY``) what a claim would take and
        leaves it for ``HANDOFF_GRACE`` to the process with the reason; if the same run is still first then (that process is full,
        draining, slow or gone), it claims what it has room for.  The dispatcher wakes at least
        every second, so a claimable run never waits long for a process with room.
        """
        most = self.settings.limits.max_concurrent_runs
        room = most - len(self._active)
        share = -(-most // self._peers) - len(self._active)  # what a reason may claim: up to an even share
        if self._claim_due:
            self._deferred = None
            return max(min(room, share), 1)
        if room <= 0:
            self._deferred = None  # full: a run left to others is theirs; a stale grace would spin the loop
            return 0
        if freed := self._freed:
            queued = self.store.any_queued(self.owner, self.affinity_only)
            if queued and share > 0:
                return min(freed, share)
            with self._freed_lock:  # what a run that ended meanwhile adds stays for the next pass
                self._freed = max(0, self._freed - freed)
            if not queued:
                self._deferred = None
                return 0
            # At its share already: the run is left to a process under it, or taken after the grace (below).
        if now < self._next_read:  # read again when it is due (the loop's timeout)
            self._read_skipped = True
            return 0
        self._next_read = now + READ_EVERY
        first = self.store.next_claimable(self.owner, most, self.affinity_only)
        if first is None:
            self._deferred = None
            return 0
        if self._deferred is not None and self._deferred[0] == first:
            if now - self._deferred[1] >= HANDOFF_GRACE:
                self._deferred = None
                return room
            return 0
        self._deferred = (first, now)
        return 0

    def _count_peers(self) -> None:
        """How many runner processes share the database now (their heartbeats are recent)."""
        self._peers = max(1, self.store.live_owner_count(self.settings.liveness_timeout))

    def _declared_dead(self) -> None:
        """Our owner row is gone: another process saw no heartbeat for ``liveness_timeout``.

        Our runs already ended ``lost`` there and their slots went to other
        runs; they are not resurrected (their end is not recorded again, the
        run rows say ``lost``).  Stop them, then come back as a new owner.
        """
        log.error(
            "this process was declared dead (no heartbeat for %gs, liveness_timeout); its %d running runs ended lost and are stopped",
            self.settings.liveness_timeout,
            len(self._active),
        )
        for active in list(self._active.values()):
            active.reason = "this flwd process was declared dead (no heartbeat within liveness_timeout)"
            active.cancel.set()
        old = self.owner
        self.owner = f"{owner_id()}:{os.urandom(3).hex()}"
        self.store.register_owner(self.owner, HOSTNAME, os.getpid())
        log.warning("re-registered as %s (was %s)", self.owner, old)

    def _sweep_leftovers(self) -> None:
        """Kill what is left of runs that no longer run (a killed server's, once its runs are lost)."""
        if self.cgroups is not None:
            sweep_leftovers(self.cgroups, self.cgroup_base)
        elif self.reaper is not None:
            self.reaper.kill_leftovers(self._run_is_over)

    def _run_is_over(self, run_id: str) -> bool:
        try:
            run = self.store.get_run(run_id)
        except RunNotFound:  # another database's run (another server on this host): not ours to touch
            return False
        return run_id not in self._active and run.status.is_terminal

    def housekeeping(self) -> None:
        self.store.prune(self.settings.limits.max_run_history)
        self.store.expire_idempotency(24 * 3600)
        self.store.checkpoint()

    def _check_cancellations(self) -> None:
        """Catch a cancel whose event this process missed (e.g. it was just starting)."""
        for run_id in self.store.cancel_requested(list(self._active)):
            active = self._active.get(run_id)
            if active and not active.cancel.is_set():
                active.reason = active.reason or "cancelled by a client"
                active.cancel.set()

    def _claim(self, want: int | None = None) -> None:
        """Claim up to ``want`` queued runs (None: as many as this process has room for)."""
        with self._claim_lock:
            free = self.settings.limits.max_concurrent_runs - len(self._active)
            free = free if want is None else min(want, free)
            self._claim_due = False  # a wake() from here on claims again
            if free <= 0 or self._draining or self._stopped:
                return
            claimed = self.store.claim(self.owner, free, self.settings.limits.max_concurrent_runs, self.affinity_only)
            self.claims[0] += 1
            self.claims[1] += not claimed
            with self._freed_lock:
                if claimed:
                    self._freed = max(0, self._freed - len(claimed))
                elif self._freed:
                    self._freed_tries -= 1
                    if self._freed_tries <= 0:
                        self._freed = 0
            for index, item in enumerate(claimed):
                active = ActiveRun(item.run)
                self._active[item.run.id] = active
                assert self._pool is not None
                try:
                    future = self._pool.submit(self._execute, item, active)
                except RuntimeError:  # the interpreter is exiting: give the runs back, never strand them
                    rest = [c.run.id for c in claimed[index:]]
                    for run_id in rest:
                        self._active.pop(run_id, None)
                    self.store.release_claims(rest, self.owner)
                    return
                self._futures.add(future)
                future.add_done_callback(self._futures.discard)

    # -- execution -------------------------------------------------------------

    def _execute(self, claimed: ClaimedRun, active: ActiveRun) -> None:
        try:
            self.executor.execute(
                claimed, active, owner=self.owner, groups=self.groups, reaper=self.reaper, workdirs=self.workdirs
            )
        finally:
            with self._freed_lock:  # counted before the slot shows free (tests wait on both)
                self._freed += 1
                self._freed_tries = FREED_TRIES
            self._active.pop(claimed.run.id, None)
            self._wakeup.set()
