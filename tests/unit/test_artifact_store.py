"""Artifact files and rows on both backends: counted by content, pruned with their runs, swept once free."""

from __future__ import annotations

import hashlib
import os

import pytest

from flwd_server.errors import ArtifactNotFound, ArtifactUnavailable
from flwd_server.models import RunStatus
from flwd_server.store.artifacts import BlobDir, Staged, open_artifact, record, run_artifacts, sweep_in
from flwd_server.store.retention import Retention
from tests.unit.test_store import queue_runs


def stage(blobs: BlobDir, path: str, content: bytes) -> Staged:
    handle, temp = blobs.temp_file()
    with handle:
        handle.write(content)
    return Staged(path, len(content), hashlib.sha256(content).hexdigest(), temp)


def finished_runs(store, count: int) -> list[str]:
    ids = queue_runs(store, count)
    for claimed in store.claim("me", count, count):
        store.finish_run(claimed.run.id, RunStatus.SUCCEEDED)
    return ids


def refs(store, content: bytes) -> int | None:
    row = (
        store.reader()
        .execute("SELECT refs FROM artifact_blobs WHERE sha256 = ?", (hashlib.sha256(content).hexdigest(),))
        .fetchone()
    )
    return row[0] if row else None


def test_a_file_two_runs_hold_outlives_the_first_runs_prune(store, tmp_path):
    blobs = BlobDir(tmp_path / "artifacts")
    first, second, _ = finished_runs(store, 3)
    record(store, blobs, first, [stage(blobs, "a.txt", b"shared"), stage(blobs, "b.txt", b"first only")])
    record(store, blobs, second, [stage(blobs, "copy/a.txt", b"shared")])
    shared = blobs.file_of(hashlib.sha256(b"shared").hexdigest())
    alone = blobs.file_of(hashlib.sha256(b"first only").hexdigest())
    assert (refs(store, b"shared"), refs(store, b"first only")) == (2, 1)
    assert os.listdir(blobs.root / ".tmp") == []  # every temporary file renamed to its digest

    assert store.prune(2) == 1  # the first run goes; its rows go, the counts drop
    assert run_artifacts(store, first) == []
    assert (refs(store, b"shared"), refs(store, b"first only")) == (1, 0)
    assert alone.exists()  # the file goes only in a later transaction
    assert store.write(lambda conn: sweep_in(conn, blobs)) == 1
    assert not alone.exists() and refs(store, b"first only") is None
    assert shared.exists()
    artifact, handle = open_artifact(store, blobs, second, "copy/a.txt")
    with handle:
        assert (artifact.size, handle.read()) == (6, b"shared")

    store.prune(0)
    store.write(lambda conn: sweep_in(conn, blobs))
    assert not shared.exists() and refs(store, b"shared") is None


def test_retention_sweeps_the_freed_files_after_its_prune(store, tmp_path):
    blobs = BlobDir(tmp_path / "artifacts")
    first, second = finished_runs(store, 2)
    record(store, blobs, first, [stage(blobs, "x", b"old")])
    record(store, blobs, second, [stage(blobs, "x", b"new")])
    retention = Retention(store, 1, blobs)
    retention.schedule()
    store.flush()
    store.flush()  # the sweep is queued behind the prune, in the next transaction
    assert not blobs.file_of(hashlib.sha256(b"old").hexdigest()).exists()
    assert blobs.file_of(hashlib.sha256(b"new").hexdigest()).exists()


def test_a_recorded_file_this_node_cannot_read_is_unavailable_and_an_unknown_path_not_found(store, tmp_path):
    blobs = BlobDir(tmp_path / "artifacts")
    (run,) = finished_runs(store, 1)
    record(store, blobs, run, [stage(blobs, "r.txt", b"r")])
    with pytest.raises(ArtifactNotFound):
        open_artifact(store, blobs, run, "../r.txt")
    with pytest.raises(ArtifactNotFound):
        open_artifact(store, blobs, run, "r.txt\x00")
    other = BlobDir(tmp_path / "not-mounted")  # another node whose artifacts.dir is not the shared mount
    with pytest.raises(ArtifactUnavailable, match="artifacts.dir"):
        open_artifact(store, other, run, "r.txt")
