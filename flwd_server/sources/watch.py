"""Linux inotify as a "nothing changed" signal for a local folder: one ``read`` instead of a walk.

The kernel queues an inotify event before a ``write``, ``rename``, ``unlink``,
``chmod`` or ``utime`` returns, so when the queue of a folder's watches is empty
nothing in it changed since the queue was last drained, and the last digest
still holds.  The watch is trusted only where that is true: a file system of this
machine (a network file system does not report other hosts' changes), every
folder watched, no hard-linked file (a write through a link outside the folder
reports to that folder only), and the watch opened by this process (a forked
worker opens its own: a shared queue would be drained by the other).  Otherwise
:meth:`FolderWatch.quiet` says no and the caller walks the folder, as it does
when inotify is missing or out of instances or watches.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import weakref

from ..forksafe import reset_after_fork

IN_MODIFY, IN_ATTRIB, IN_CLOSE_WRITE = 0x2, 0x4, 0x8
IN_MOVED_FROM, IN_MOVED_TO, IN_CREATE, IN_DELETE = 0x40, 0x80, 0x100, 0x200
IN_DELETE_SELF, IN_MOVE_SELF, IN_ONLYDIR, IN_DONT_FOLLOW = 0x400, 0x800, 0x01000000, 0x02000000
MASK = (
    IN_MODIFY
    | IN_ATTRIB
    | IN_CLOSE_WRITE
    | IN_MOVED_FROM
    | IN_MOVED_TO
    | IN_CREATE
    | IN_DELETE
    | IN_DELETE_SELF
    | IN_MOVE_SELF
    | IN_ONLYDIR
    | IN_DONT_FOLLOW
)
# statfs f_type of the local file systems whose changes all reach inotify: ext2/3/4, xfs, btrfs, tmpfs,
# overlay, zfs, f2fs.  NFS, SMB, FUSE and the like are walked every time.
LOCAL_FILE_SYSTEMS = frozenset({0xEF53, 0x58465342, 0x9123683E, 0x01021994, 0x794C7630, 0x2FC12FC1, 0xF2F52010})

_libc = None


def _c() -> ctypes.CDLL | None:
    global _libc
    if _libc is None:
        try:
            _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
            _libc.inotify_init1  # noqa: B018 - raises AttributeError where there is no inotify
        except (OSError, AttributeError):
            _libc = False
    return _libc or None


def file_system(path: bytes) -> int | None:
    """The ``f_type`` of the file system holding ``path``, or None if it cannot be told."""
    libc = _c()
    if libc is None:
        return None
    buf = ctypes.create_string_buffer(256)  # struct statfs; f_type is its first field, a C long
    if libc.statfs(path, buf) != 0:
        return None
    return ctypes.c_ulong.from_buffer(buf).value & 0xFFFFFFFF


def _close(fd: int) -> None:
    try:
        os.close(fd)
    except OSError:
        pass


class FolderWatch:
    """Arm before a walk (:meth:`arm`), watch each folder before listing it (:meth:`add`), ask :meth:`quiet`."""

    def __init__(self) -> None:
        self._fd: int | None = None
        self._closer: weakref.finalize | None = None  # closes the queue when the source is dropped
        self._armed = False
        reset_after_fork(self, "_forget")

    def _forget(self) -> None:
        """In a forked child (the parent's queue is not ours to drain), or when the queue failed."""
        if self._closer is not None:
            self._closer()
        self._fd = self._closer = None
        self._armed = False

    def quiet(self) -> bool:
        """True only if the watch is armed and nothing happened since it was; drains the queue otherwise."""
        if not self._armed or self._fd is None:
            return False
        try:
            os.read(self._fd, 65536)
        except BlockingIOError:
            return True
        except OSError:
            self._forget()
            return False
        self._drain()
        return False

    def _drain(self) -> None:
        try:
            while os.read(self._fd, 65536):
                pass
        except OSError:
            pass

    def arm(self) -> None:
        """Start a walk: from now on each change is queued; the walk then calls :meth:`add` per folder."""
        libc = _c()
        if self._fd is None and libc is not None:
            fd = libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
            if fd >= 0:  # else out of inotify instances: walk every time
                self._fd = fd
                self._closer = weakref.finalize(self, _close, fd)
        self._armed = self._fd is not None
        if self._armed:
            self._drain()

    def add(self, folder: bytes) -> None:
        """Watch ``folder`` (before it is listed); a folder that cannot be watched disarms the watch."""
        if not self._armed:
            return
        libc = _c()
        if file_system(folder) not in LOCAL_FILE_SYSTEMS or libc.inotify_add_watch(self._fd, folder, MASK) < 0:
            self._armed = False

    def disarm(self) -> None:
        """What the walk found cannot be watched (a hard-linked file): walk every time."""
        self._armed = False
