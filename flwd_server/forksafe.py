"""Objects that must forget their threads and connections in a forked child.

A thread does not survive ``fork`` and an SQLite handle must not be shared with
a child, so objects that own them register a reset that runs in the child right
after the fork (gunicorn workers, ``--preload``, multiprocessing).  This costs
nothing per call, unlike comparing ``os.getpid()`` on every use.
"""

from __future__ import annotations

import os
import weakref


def reset_after_fork(obj: object, method: str) -> None:
    ref = weakref.ref(obj)

    def hook() -> None:
        target = ref()
        if target is not None:
            getattr(target, method)()

    os.register_at_fork(after_in_child=hook)
