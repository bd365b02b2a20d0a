"""An engine built before a fork that runs no at-fork hooks (uWSGI forks in C) works in the child, and the
process that builds the app for such a host can be left with no thread running."""

from __future__ import annotations

import ctypes
import os
import signal
import threading
import time

import pytest

from flwd_server import forksafe
from flwd_server.auth.bearer import SCOPES
from flwd_server.engine import Engine
from flwd_server.models import Principal
from flwd_server.planner import PlanRequest
from flwd_server.web import hosts
from tests.fixtures.helpers import wait_until

ADMIN = Principal("alice", frozenset(SCOPES))
libc_fork = ctypes.PyDLL(None).fork  # fork(2) itself, as a C host calls it: no os.register_at_fork hook runs


class Resettable:
    def __init__(self) -> None:
        self.resets = 0
        forksafe.reset_after_fork(self, "reset")

    def reset(self) -> None:
        self.resets += 1


def in_child(fork, body) -> str:
    """Run ``body()`` in a child made by ``fork``; its result as text, or 'hung' after 30 s."""
    read, write = os.pipe()
    pid = fork()
    if pid == 0:  # pragma: no cover - runs in the child
        try:
            os.write(write, str(body()).encode())
        except BaseException as exc:
            os.write(write, f"error: {exc!r}".encode())
        finally:
            os._exit(0)
    os.close(write)
    deadline = time.monotonic() + 30
    while os.waitpid(pid, os.WNOHANG) == (0, 0):
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            os.close(read)
            return "hung"
        time.sleep(0.02)
    with os.fdopen(read, "rb") as pipe:
        return pipe.read().decode()


def test_check_runs_each_reset_once_in_a_child_forked_without_hooks():
    obj = Resettable()
    assert forksafe.check() is None and obj.resets == 0  # nothing to do in the process that made it

    def child() -> str:
        before = obj.resets
        forksafe.check()
        forksafe.check()
        late = Resettable()  # made in the child: it belongs to the child already
        forksafe.check()
        return f"{before} {obj.resets} {late.resets}"

    assert in_child(libc_fork, child) == "0 1 0"
    assert in_child(os.fork, lambda: f"{obj.resets}") == "1"  # os.fork ran the hook itself
    assert in_child(os.fork, lambda: (forksafe.check(), obj.resets)[1]) == "1"  # and check does not run it again


@pytest.mark.parametrize("fork", [libc_fork, os.fork], ids=["fork-without-hooks", "os.fork"])
def test_an_engine_whose_writer_ran_before_the_fork_runs_jobs_in_the_child(make_settings, tmp_path, fork):
    """The sources of the config file are written while the engine is built, so the store's writer thread has
    run before the host forks.  A child that kept its parent's state would queue writes for a thread it does
    not have, and claim runs under its parent's owner id."""
    (tmp_path / "src" / "jobs").mkdir(parents=True)
    sources = [{"name": "mine", "type": "local", "path": str(tmp_path / "src")}]
    engine = Engine(make_settings(**{"sse.poll_interval": 0.01}, sources=sources))
    engine.store.flush()
    assert engine.store._writer.is_alive()
    if fork is libc_fork:
        engine.park()  # as flwd_server.wsgi does: a thread alive at a fork in C can leave the child's GIL locked
    parent_owner = engine.runner.owner

    def child() -> str:
        engine.start()
        run, _ = engine.submit(PlanRequest("hello-world", {"name": "Child"}), ADMIN)
        done = wait_until(lambda: (r := engine.run(run.id)).status.is_terminal and r, 20)
        owner = next(e.data["owner"] for e in engine.store.iter_events(run.id) if e.type == "run.started")
        return f"{done.status.value} {owner == parent_owner} {owner.split(':')[1] == str(os.getpid())}"

    try:
        assert in_child(fork, child) == "succeeded False True"
    finally:
        engine.close(grace=0)


def test_park_leaves_no_thread_running_and_the_next_write_starts_one(make_settings, tmp_path):
    (tmp_path / "src" / "jobs").mkdir(parents=True)
    sources = [{"name": "mine", "type": "local", "path": str(tmp_path / "src")}]
    others = set(threading.enumerate())  # other tests' engines may still have threads: only this one's count

    def this_engines_threads() -> list[str]:
        return [t.name for t in threading.enumerate() if t not in others and t.name.startswith("flwd-")]

    engine = Engine(make_settings(sources=sources))
    try:
        engine.store.flush()
        assert "flwd-store-writer" in this_engines_threads()
        engine.park()
        assert not this_engines_threads()
        engine.store.flush()  # would wait forever without a writer
        assert engine.store._writer.is_alive()
    finally:
        engine.close(grace=0)


@pytest.mark.parametrize(
    ("opt", "threads"),
    [
        ({"threads": "8", "master": True}, 8),
        ({b"threads": b"3", b"enable-threads": True}, 3),
        ({"threads": ["4", "16"]}, 16),
    ],
)
def test_uwsgi_threads_come_from_its_options(opt, threads):
    assert hosts.uwsgi_threads(opt) == threads


@pytest.mark.parametrize("opt", [{}, {"processes": "2"}, {"threads": "1"}, {"enable-threads": True}])
def test_a_uwsgi_without_threads_is_refused_with_the_option_to_add(opt):
    with pytest.raises(SystemExit) as refused:
        hosts.uwsgi_threads(opt)
    assert "--threads 8" in str(refused.value) and "runner" in str(refused.value)
