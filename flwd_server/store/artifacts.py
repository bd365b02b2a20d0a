"""Run artifacts, durable: files named by their sha256 in ``artifacts.dir``, rows in the store.

A file is written under a temporary name in the directory, fsynced, and renamed
to its digest inside the write transaction that records its rows, so a crash
leaves no half file under a digest name and no row without its file.  Files are
shared by content: ``artifact_blobs`` counts how many rows name each digest, and
pruning a run (:meth:`~flwd_server.store.backend.Store.prune_in`) only lowers
those counts.  The files nobody holds any more go in a later transaction
(:func:`sweep_in`), which takes the same database-wide write lock as a new
artifact's rename: a file is never removed between a new row's insert and its
rename, on this node or another.  A sweep that fails half way leaves a counted
row without its file; the next artifact of that content puts the file back, and
the next sweep removes the row.

Several nodes may point ``artifacts.dir`` at one shared mount; the paths here
depend only on the digest, so any node serves what any other collected.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from ..errors import ArtifactNotFound, ArtifactUnavailable, disk_error

log = logging.getLogger("flwd.artifacts")
DIGEST_RE = re.compile(r"[0-9a-f]{64}")
TEMP = ".tmp"
MAX_PATH = 1024  # bytes of a collected path (longer names are refused)
SWEEP_BATCH = 500


@dataclass(frozen=True)
class Artifact:
    """One file a run left in ``$FLWD_ARTIFACTS``: its normalised relative path, size and digest."""

    path: str
    size: int
    sha256: str

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "size": self.size, "sha256": self.sha256}


@dataclass(frozen=True)
class Staged:
    """A file copied into the artifact directory under a temporary name, its digest known."""

    path: str
    size: int
    sha256: str
    temp: Path


class BlobDir:
    """The content-addressed files: ``ROOT/ab/abcdef…`` by sha256; temporary files in ``ROOT/.tmp``."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def file_of(self, digest: str) -> Path:
        if not DIGEST_RE.fullmatch(digest):
            raise ValueError("not a sha256 digest")
        return self.root / digest[:2] / digest

    def temp_file(self) -> tuple[IO[bytes], Path]:
        """A new private file to copy an artifact into (same file system as its final name)."""
        folder = self.root / TEMP
        try:
            folder.mkdir(parents=True, exist_ok=True)
            path = folder / secrets.token_hex(16)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        except OSError as exc:
            raise disk_error("could not write an artifact to", folder, exc) from None
        return os.fdopen(fd, "wb"), path

    def place(self, temp: Path, digest: str) -> None:
        """Rename a finished temporary file to its digest (atomic); the directory entry is fsynced too."""
        final = self.file_of(digest)
        if not temp.exists() and final.exists():
            return  # a retried transaction: the first attempt renamed it
        final.parent.mkdir(exist_ok=True)
        os.replace(temp, final)
        fd = os.open(final.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def open(self, digest: str) -> IO[bytes]:
        return open(self.file_of(digest), "rb")  # noqa: SIM115  # the response closes it

    def remove(self, digest: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.file_of(digest))


def record(store: Any, blobs: BlobDir, run_id: str, staged: list[Staged]) -> None:
    """Rename the staged files to their digests and record their rows and counts, in one transaction."""
    if not staged:
        return

    def op(conn: Any) -> None:
        for item in staged:
            blobs.place(item.temp, item.sha256)
            conn.execute(
                "INSERT INTO artifact_blobs(sha256, size, refs) VALUES (?, ?, 1) "
                "ON CONFLICT(sha256) DO UPDATE SET refs = artifact_blobs.refs + 1",
                (item.sha256, item.size),
            )
            conn.execute(
                "INSERT INTO artifacts(run_id, path, sha256, size) VALUES (?, ?, ?, ?)",
                (run_id, item.path, item.sha256, item.size),
            )

    store.write(op)


def run_artifacts(store: Any, run_id: str) -> list[Artifact]:
    """A run's artifacts by path (an unknown run has none; the caller checks it exists)."""
    rows = (
        store.reader()
        .execute("SELECT path, size, sha256 FROM artifacts WHERE run_id = ? ORDER BY path", (run_id,))
        .fetchall()
    )
    return [Artifact(*row) for row in rows]


def open_artifact(store: Any, blobs: BlobDir, run_id: str, path: str) -> tuple[Artifact, IO[bytes]]:
    """The artifact at exactly ``path`` of the run and its file, open; the path is only ever looked up."""
    if len(path) > MAX_PATH or any(ord(c) < 32 for c in path):  # never collected (and NUL: PostgreSQL refuses it)
        raise ArtifactNotFound(f"run {run_id} has no artifact {path[:256]!r}")
    row = (
        store.reader()
        .execute("SELECT path, size, sha256 FROM artifacts WHERE run_id = ? AND path = ?", (run_id, path))
        .fetchone()
    )
    if row is None:
        raise ArtifactNotFound(f"run {run_id} has no artifact {path[:256]!r}")
    artifact = Artifact(*row)
    try:
        return artifact, blobs.open(artifact.sha256)
    except OSError as exc:
        log.error("artifact %s of run %s: cannot read %s: %s", artifact.path, run_id, artifact.sha256, exc.strerror)
        raise ArtifactUnavailable(
            f"artifact {artifact.path!r} of run {run_id} is recorded but this node cannot read its file "
            f"({exc.strerror or type(exc).__name__}); is artifacts.dir the shared mount every node uses?"
        ) from None


def sweep_in(conn: Any, blobs: BlobDir) -> int:
    """Remove the files no run holds any more (inside a write transaction); returns how many."""
    rows = conn.execute(
        "SELECT sha256 FROM artifact_blobs WHERE refs <= 0 ORDER BY sha256 LIMIT ?", (SWEEP_BATCH,)
    ).fetchall()
    for (digest,) in rows:
        blobs.remove(digest)
        conn.execute("DELETE FROM artifact_blobs WHERE sha256 = ? AND refs <= 0", (digest,))
    return len(rows)


def anything_to_sweep(conn: Any) -> bool:
    """Whether some file is held by no run (one probe of a partial index)."""
    return conn.execute("SELECT 1 FROM artifact_blobs WHERE refs <= 0 LIMIT 1").fetchone() is not None


def release_in(conn: Any, run_ids: list[str]) -> None:
    """Forget the artifacts of runs being pruned: their rows go, their files' counts drop."""
    marks = ",".join("?" * len(run_ids))
    held = conn.execute(
        f"SELECT sha256, count(*) FROM artifacts WHERE run_id IN ({marks}) GROUP BY sha256", run_ids
    ).fetchall()
    for digest, count in held:
        conn.execute("UPDATE artifact_blobs SET refs = refs - ? WHERE sha256 = ?", (count, digest))
    conn.execute(f"DELETE FROM artifacts WHERE run_id IN ({marks})", run_ids)
