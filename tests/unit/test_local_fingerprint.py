"""A local source's revision: a content digest of every file a step can read, current at every call."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from flwd_server.errors import Unprocessable
from flwd_server.sources.fingerprint import MAX_BYTES, MAX_FILES, RACY_NS, FolderFingerprint, FolderTooLarge, settled
from flwd_server.sources.local import LocalSource
from flwd_server.sources.watch import FolderWatch
from tests.fixtures.git import job_yaml


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    (tmp_path / "jobs").mkdir()
    (tmp_path / "scripts").mkdir()
    (tmp_path / "jobs" / "a.yaml").write_text(job_yaml("a", 'sh "$FLWD_SOURCE_DIR/scripts/a.sh"'))
    (tmp_path / "scripts" / "a.sh").write_text("echo one\n")
    return tmp_path


def rewrite_keeping_size_and_mtime(path: Path, text: str) -> None:
    before = path.stat()
    assert len(text.encode()) == before.st_size
    path.write_text(text)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = path.stat()
    assert (after.st_size, after.st_mtime_ns) == (before.st_size, before.st_mtime_ns)


def test_the_digest_is_of_content_the_same_for_equal_folders_and_unmoved_by_touch(folder, tmp_path_factory):
    fingerprint = FolderFingerprint(folder)
    first = fingerprint.digest()
    assert fingerprint.digest() == first
    later = time.time_ns() + 5 * RACY_NS
    os.utime(folder / "scripts" / "a.sh", ns=(later, later))
    assert fingerprint.digest() == first
    copy = tmp_path_factory.mktemp("copy")
    for rel in ("jobs/a.yaml", "scripts/a.sh"):
        (copy / rel).parent.mkdir(exist_ok=True)
        (copy / rel).write_bytes((folder / rel).read_bytes())
    assert FolderFingerprint(copy).digest() == first  # another node with the same files: the same revision


def test_every_change_a_step_could_read_moves_the_digest(folder):
    fingerprint = FolderFingerprint(folder)
    seen = {fingerprint.digest()}
    script = folder / "scripts" / "a.sh"

    def changed() -> None:
        digest = fingerprint.digest()
        assert digest not in seen
        seen.add(digest)

    script.write_text("echo two\n")
    changed()
    rewrite_keeping_size_and_mtime(script, "echo six\n")
    changed()
    script.chmod(0o755)
    changed()
    (folder / "deep" / "er").mkdir(parents=True)
    (folder / "deep" / "er" / "data.txt").write_text("x")
    changed()
    (folder / "link").symlink_to("scripts/a.sh")
    changed()
    (folder / "link").unlink()
    (folder / "link").symlink_to("jobs/a.yaml")
    changed()
    (folder / "deep" / "er" / "data.txt").rename(folder / "deep" / "data.txt")
    changed()


def test_git_metadata_is_left_out_and_a_fifo_is_never_opened(folder):
    fingerprint = FolderFingerprint(folder)
    first = fingerprint.digest()
    (folder / ".git").mkdir()
    (folder / ".git" / "index").write_bytes(b"\0" * 64)
    assert fingerprint.digest() == first
    os.mkfifo(folder / "pipe")  # opening it for reading would block for ever
    with_fifo = fingerprint.digest()
    assert with_fifo != first and fingerprint.digest() == with_fifo


def test_a_file_written_within_a_timestamp_tick_of_a_scan_is_read_again_at_the_next(folder):
    fresh = (folder / "scripts" / "a.sh").stat()
    assert not settled(fresh, time.time_ns())
    assert settled(fresh, max(fresh.st_mtime_ns, fresh.st_ctime_ns) + RACY_NS + 1)


def test_more_files_or_bytes_than_the_caps_is_folder_too_large(tmp_path):
    many = tmp_path / "many"
    many.mkdir()
    for i in range(MAX_FILES + 1):
        (many / f"f{i}").touch()
    with pytest.raises(FolderTooLarge, match=f"more than {MAX_FILES} files"):
        FolderFingerprint(many).digest()
    big = tmp_path / "big"
    big.mkdir()
    with open(big / "sparse", "wb") as out:
        out.truncate(MAX_BYTES + 1)  # sparse: nothing is written, and nothing is read either
    with pytest.raises(FolderTooLarge, match="MiB of files"):
        FolderFingerprint(big).digest()


def local(folder: Path) -> LocalSource:
    return LocalSource("mine", {"type": "local", "name": "mine", "path": str(folder)}, 60)


def test_a_local_source_sees_an_edit_at_once_and_reuses_its_snapshot_when_nothing_changed(folder):
    source = local(folder)
    first = source.snapshot()
    assert source.snapshot() is first  # GET /jobs renders once per snapshot
    job = folder / "jobs" / "a.yaml"
    job.write_text(job_yaml("a", "echo AAAA"))
    second = source.snapshot()
    assert second.jobs["a"].steps[0].run == "echo AAAA" and second.revision != first.revision
    rewrite_keeping_size_and_mtime(job, job_yaml("a", "echo BBBB"))
    third = source.snapshot()
    assert third.jobs["a"].steps[0].run == "echo BBBB" and third.revision != second.revision
    assert third.jobs["a"].revision == third.revision
    (folder / "scripts" / "a.sh").write_text("echo edited\n")
    assert source.snapshot().revision != third.revision


def test_a_local_source_too_large_to_cover_serves_no_job_and_refuses_to_sync(folder):
    with open(folder / "huge.bin", "wb") as out:
        out.truncate(MAX_BYTES + 1)
    source = local(folder)
    snap = source.snapshot()
    assert snap.jobs == {} and snap.revision is None
    assert [e["field"] for e in snap.errors] == ["(source)"] and "too large" in snap.errors[0]["message"]
    with pytest.raises(Unprocessable) as refused:
        source.sync()
    assert refused.value.status == 422 and refused.value.errors[0]["field"] == "path"
    (folder / "huge.bin").unlink()
    assert set(source.sync().jobs) == {"a"}


def test_the_inotify_watch_is_quiet_until_something_in_a_watched_folder_changes(folder):
    watch = FolderWatch()
    assert not watch.quiet()  # not armed: the caller must walk
    watch.arm()
    watch.add(os.fsencode(folder / "scripts"))
    assert watch.quiet() and watch.quiet()
    (folder / "scripts" / "a.sh").write_text("echo two\n")
    assert not watch.quiet()  # and the queue is drained: the caller walks, then arms again
    watch.arm()
    watch.add(os.fsencode(folder / "scripts"))
    os.utime(folder / "scripts" / "a.sh")
    assert not watch.quiet()
    watch.disarm()
    assert not watch.quiet()


def test_a_hard_linked_file_written_through_its_other_name_is_seen_at_once(folder, tmp_path_factory):
    outside = tmp_path_factory.mktemp("outside") / "shared.sh"
    outside.write_text("echo one\n")
    os.link(outside, folder / "scripts" / "shared.sh")
    source = local(folder)
    before = source.snapshot().revision
    with open(outside, "r+") as out:  # the write reports to the outside folder only
        out.write("echo two\n")
    assert source.snapshot().revision != before


def test_a_forked_worker_watches_on_its_own_and_drains_nothing_of_its_parent(folder):
    source = local(folder)
    before = source.snapshot().revision
    pid = os.fork()
    if pid == 0:  # the child: edit, and see the edit (draining any queue it shares)
        try:
            (folder / "scripts" / "a.sh").write_text("echo from the child\n")
            seen = source.snapshot().revision != before and source.snapshot().revision != before
            os._exit(0 if seen else 1)
        finally:
            os._exit(2)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert source.snapshot().revision != before  # the parent's queue still held the child's edit
