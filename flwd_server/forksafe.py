"""Objects that must forget their threads and connections in a forked child.

A thread does not survive ``fork`` and an SQLite handle must not be shared with
a child, so objects that own them register a reset that runs in the child.
Python's ``os.fork`` runs it right after the fork (gunicorn workers,
``--preload``, multiprocessing).  Hosts that fork in C run no at-fork hooks
(uWSGI without ``--py-call-osafterfork``), so :func:`check` also compares the
pid that each reset last ran for with ``os.getpid()`` and runs the missing ones;
the engine calls it wherever it is entered.  One ``getpid`` per call, at most a
lock the first time in a new process.
"""

from __future__ import annotations

import os
import threading
import weakref

# (object, method name, pid the object's state belongs to), in registration order
_resets: list[tuple[weakref.ref, str, list[int]]] = []
_pid = os.getpid()  # every reset has run for this process
_lock = threading.RLock()  # a reset may make objects that register their own


def reset_after_fork(obj: object, method: str) -> None:
    """Call ``obj.method()`` in every process forked from this one, before the object is used there."""
    with _lock:
        _resets.append((weakref.ref(obj), method, [os.getpid()]))


def check() -> None:
    """Run the resets a fork without at-fork hooks skipped (cheap when there are none)."""
    if _pid != os.getpid():
        with _lock:
            _run_resets()


def _run_resets() -> None:
    global _pid
    pid = os.getpid()
    if _pid == pid:
        return
    alive = []
    for ref, method, owner in _resets:
        target = ref()
        if target is None:
            continue
        if owner[0] != pid:
            owner[0] = pid
            getattr(target, method)()
        alive.append((ref, method, owner))
    _resets[:] = alive
    _pid = pid


def _after_fork_in_child() -> None:
    global _lock
    _lock = threading.RLock()  # another thread of the parent may have held it at the fork
    _run_resets()


os.register_at_fork(after_in_child=_after_fork_in_child)
