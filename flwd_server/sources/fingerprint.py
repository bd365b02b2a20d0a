"""A folder's content digest, recomputed on every call at the cost of one ``lstat`` per file.

A local source's revision must cover every file a step can read through
``FLWD_SOURCE_DIR`` (as a git commit does), and must be current at each plan and
run.  Each call walks the folder and stats every entry; a file is read and hashed
again only when its stat changed - ``mtime_ns``, ``ctime_ns``, size, inode or mode.
``ctime`` is set by the kernel on every write, rename, chmod and ``utime``, and no
user can set it back, so a same-size rewrite that restores ``mtime`` still shows.
Timestamps have a granularity (a kernel tick; 2 s on some file systems), so two
writes within one tick can leave every stat field equal: a file whose ``mtime`` or
``ctime`` is within ``RACY_NS`` of the scan that hashed it is hashed again at the
next scan too (git's "racily clean" rule).  Hashing content, not stat values, also
keeps the digest stable when nothing changed (``touch``) and equal on every node
that has the same files.

What the digest covers, like a git tree: each regular file's path, bytes and
executable bit, each symlink's path and target (not what it points to), and the
path of anything else (a FIFO is never opened).  Folders named ``.git`` are left
out (git changes them when it only reads).  The cost is bounded: more than
``MAX_FILES`` files or ``MAX_BYTES`` bytes is :class:`FolderTooLarge`.
"""

from __future__ import annotations

import hashlib
import os
import stat
import time
from collections.abc import Callable

MAX_FILES = 10_000
MAX_BYTES = 256 * 1024 * 1024
RACY_NS = 2_000_000_000
SKIPPED_FOLDERS = frozenset({b".git"})
CHUNK = 1024 * 1024


def _path(entry: tuple[bytes, os.stat_result | None]) -> bytes:
    return entry[0]


class FolderTooLarge(Exception):
    """The folder holds more files or bytes than a scan may cover; ``str()`` says which."""


def stat_key(st: os.stat_result) -> tuple[int, ...]:
    """What changes whenever a file's content may have: ``ctime`` cannot be set back by a user."""
    return (st.st_mtime_ns, st.st_ctime_ns, st.st_size, st.st_ino, st.st_dev, st.st_mode)


def settled(st: os.stat_result, now_ns: int) -> bool:
    """Whether a later write must change ``st``'s key: not so within one timestamp tick of ``now_ns``."""
    return max(st.st_mtime_ns, st.st_ctime_ns) < now_ns - RACY_NS


class FolderFingerprint:
    """The digest of one folder's files; keeps each file's hash until its stat changes.

    Not thread-safe: the caller serialises calls (a local source holds its lock).
    Paths are bytes throughout: any file name works, and nothing is encoded per file.
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = os.fsencode(root)
        self._lines: dict[bytes, tuple[tuple[int, ...], bytes]] = {}  # settled files: stat key, digest line
        self.hard_linked = False  # whether the last walk met a file with another name (outside, maybe)

    def digest(self, on_folder: Callable[[bytes], None] | None = None) -> str:
        """The hex SHA-256 over every covered entry, in path order; FolderTooLarge beyond the caps.

        ``on_folder`` is called with each folder's path before it is listed (to watch it).
        """
        started = time.time_ns()
        entries = self._walk(on_folder)
        self.hard_linked = any(st is not None and st.st_nlink > 1 and stat.S_ISREG(st.st_mode) for _, st in entries)
        lines = self._lines
        parts = []
        for rel, st in entries:
            if st is None:
                parts.append(rel + b"\0d\0unreadable folder\n")
            elif stat.S_ISREG(st.st_mode):
                key = stat_key(st)
                known = lines.get(rel)
                if known is not None and known[0] == key:
                    parts.append(known[1])
                    continue
                line = rel + (b"\0x\0" if st.st_mode & 0o111 else b"\0f\0") + self._hash_file(rel) + b"\n"
                if settled(st, started):
                    lines[rel] = (key, line)
                else:
                    lines.pop(rel, None)  # written within a tick of now: read it again next time
                parts.append(line)
            elif stat.S_ISLNK(st.st_mode):
                parts.append(rel + b"\0l\0" + self._link_target(rel) + b"\n")
            else:
                parts.append(rel + b"\0o\0" + str(stat.S_IFMT(st.st_mode)).encode() + b"\n")
        if len(lines) > len(entries):  # files were removed: forget their hashes
            seen = {rel for rel, _ in entries}
            for gone in [rel for rel in lines if rel not in seen]:
                del lines[gone]
        return hashlib.sha256(b"".join(parts)).hexdigest()

    def _walk(self, on_folder: Callable[[bytes], None] | None) -> list[tuple[bytes, os.stat_result | None]]:
        found: list[tuple[bytes, os.stat_result | None]] = []
        files = size = 0
        folders = [b""]
        while folders:
            folder = folders.pop()
            path = self.root + b"/" + folder if folder else self.root
            if on_folder is not None:
                on_folder(path)
            try:
                with os.scandir(path) as listing:
                    for entry in listing:
                        rel = folder + b"/" + entry.name if folder else entry.name
                        try:
                            st = entry.stat(follow_symlinks=False)
                        except FileNotFoundError:
                            continue  # removed while listing: as if it never was
                        if stat.S_ISDIR(st.st_mode):
                            if entry.name not in SKIPPED_FOLDERS:
                                folders.append(rel)
                            continue
                        files += 1
                        if files > MAX_FILES:
                            raise FolderTooLarge(f"more than {MAX_FILES} files")
                        if stat.S_ISREG(st.st_mode):
                            size += st.st_size
                            if size > MAX_BYTES:
                                raise FolderTooLarge(f"more than {MAX_BYTES // (1024 * 1024)} MiB of files")
                        found.append((rel, st))
            except (PermissionError, NotADirectoryError, FileNotFoundError):
                if not folder:
                    raise  # the source folder itself
                found.append((folder, None))  # a folder steps cannot read either; its name still counts
        found.sort(key=_path)
        return found

    def _hash_file(self, rel: bytes) -> bytes:
        """The file's SHA-256 (hex), or why it cannot be read: never opens a FIFO or follows a link."""
        try:
            fd = os.open(self.root + b"/" + rel, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as exc:
            return b"unreadable: " + (exc.strerror or "").encode()
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):  # swapped for a FIFO or a folder since the walk
                return b"not a regular file"
            digest = hashlib.sha256()
            while chunk := os.read(fd, CHUNK):
                digest.update(chunk)
            return digest.hexdigest().encode()
        except OSError as exc:
            return b"unreadable: " + (exc.strerror or "").encode()
        finally:
            os.close(fd)

    def _link_target(self, rel: bytes) -> bytes:
        try:
            return os.readlink(self.root + b"/" + rel)
        except OSError as exc:
            return b"unreadable: " + (exc.strerror or "").encode()
