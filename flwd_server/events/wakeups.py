"""Wake-ups between the flwd processes of one host that share a database.

SQLite has no LISTEN/NOTIFY.  Without one, a process learns of another's
commit only when its event poller next looks (``sse.poll_interval``), which
puts that interval into every cross-worker latency (a run submitted to one
worker and followed through another, a cancel, a freed slot).  Each process
binds an abstract-namespace datagram socket named after the database; after a
commit the writer sends one byte to every peer's socket.  Peers are found in
``/proc/net/unix``; a vanished peer just makes ``sendto`` fail.  Polling stays
as the fallback (other hosts, non-Linux systems, a missed datagram).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import socket
import threading
import time

from ..forksafe import reset_after_fork

PEER_SCAN_EVERY = 1.0


class Wakeups:
    def __init__(self, db_path: str) -> None:
        digest = hashlib.sha256(os.path.abspath(db_path).encode()).hexdigest()[:16]
        self.prefix = f"flwd-{digest}-"
        self._reset()
        reset_after_fork(self, "_reset")

    def _reset(self) -> None:
        self._sock: socket.socket | None = None
        self._name: bytes | None = None
        self._peers: list[bytes] = []
        self._scanned = 0.0
        self._lock = threading.Lock()
        self._sender: socket.socket | None = None
        self._closed = False

    def _bind(self) -> socket.socket | None:
        if self._sock is not None or self._closed:
            return self._sock
        with self._lock:
            if self._sock is None:
                try:
                    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                    name = f"\0{self.prefix}{os.getpid()}-{os.urandom(3).hex()}".encode()
                    sock.bind(name)
                except OSError:
                    return None  # no abstract sockets here: polling alone still works
                self._name = name
                self._sock = sock
        return self._sock

    def wait(self, timeout: float) -> bool:
        """Block until woken or ``timeout``; True if woken.  Drains every pending wake-up."""
        sock = self._bind()
        if sock is None:
            time.sleep(timeout)
            return False
        sock.settimeout(timeout)
        try:
            sock.recv(16)
        except (TimeoutError, BlockingIOError, InterruptedError):
            return False
        self.drain()
        return True

    def fileno(self) -> int | None:
        """The waiting socket's descriptor, for a caller that waits on it with others (select)."""
        sock = self._bind()
        return sock.fileno() if sock is not None else None

    def drain(self) -> None:
        """Consume every pending wake-up without blocking."""
        sock = self._sock
        if sock is None:
            return
        sock.setblocking(False)
        with contextlib.suppress(BlockingIOError, InterruptedError, OSError):
            while sock.recv(16):
                pass

    def wake_self(self) -> None:
        """Wake this process's waiter, if it has one (only the event poller binds a socket)."""
        if self._name is not None:
            self._send([self._name])

    def wake_peers(self) -> None:
        now = time.monotonic()
        if now - self._scanned > PEER_SCAN_EVERY:
            self._scanned = now
            self._peers = [p for p in self._scan() if p != self._name]
        self._send(self._peers)

    def _scan(self) -> list[bytes]:
        """Abstract sockets show in /proc/net/unix as ``@name``; ours share the database's prefix."""
        marker = "@" + self.prefix
        found = []
        try:
            with open("/proc/net/unix") as table:
                for line in table:
                    path = line.rsplit(None, 1)[-1]
                    if path.startswith(marker):
                        found.append(("\0" + path[1:]).encode())
        except OSError:
            return []
        return found

    def _send(self, names: list[bytes]) -> None:
        if not names or self._closed:
            return
        sender = self._sender
        if sender is None:
            with self._lock:
                if self._closed:
                    return
                if self._sender is None:
                    self._sender = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                    self._sender.setblocking(False)
                sender = self._sender
        for name in names:
            with contextlib.suppress(OSError):  # gone, or its queue is full (it is awake anyway)
                sender.sendto(b"!", name)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            for sock in (self._sock, self._sender):
                if sock is not None:
                    sock.close()
            self._sock = self._sender = None
            self._name = None
