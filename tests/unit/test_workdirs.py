"""A run's directories: kept and renamed for the next run only when the run left them as it got them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from flwd_server.runs.cgroups import process_start
from flwd_server.runs.workdirs import IDLE_PREFIX, RunDirs, WorkDirPool


def names(root: Path) -> list[str]:
    return sorted(os.listdir(root))


def mode(path: Path) -> int:
    return os.lstat(path).st_mode & 0o777


def step_file(path: Path, text: str) -> None:
    """As RunOutputs.file_for makes it: private."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.write(fd, text.encode())
    os.close(fd)


@pytest.fixture
def pool(tmp_path: Path) -> WorkDirPool:
    return WorkDirPool(tmp_path / "work")


def test_a_run_gets_a_private_work_dir_with_its_artifacts_folder_and_an_outputs_dir_beside_it(pool):
    dirs = pool.acquire("run1")
    assert dirs == RunDirs(pool.root / "run1", pool.root / "run1.outputs")
    assert names(dirs.workdir) == ["artifacts"] and names(dirs.outputs) == []
    assert mode(dirs.workdir) == mode(dirs.workdir / "artifacts") == mode(dirs.outputs) == 0o700


def test_clean_directories_are_renamed_for_the_next_run_not_made_again(pool):
    first = pool.acquire("run1")
    inodes = (os.stat(first.workdir).st_ino, os.stat(first.outputs).st_ino)
    step_file(first.outputs / "step-0", "key=secret value\n")
    pool.release(first, reusable=True)
    assert [n for n in names(pool.root) if not n.startswith(IDLE_PREFIX)] == []  # the run's names are gone
    second = pool.acquire("run2")
    assert (os.stat(second.workdir).st_ino, os.stat(second.outputs).st_ino) == inodes
    assert names(pool.root) == ["run2", "run2.outputs"]
    assert names(second.workdir) == ["artifacts"]
    assert (second.outputs / "step-0").read_bytes() == b""  # no output of the last run lingers


@pytest.mark.parametrize(
    "leave",
    [
        lambda d: (d.workdir / "notes.txt").write_text("x"),
        lambda d: (d.workdir / "artifacts" / "report.txt").write_text("x"),
        lambda d: (d.workdir / ".cache").mkdir(),
        lambda d: os.chmod(d.workdir, 0o755),
        lambda d: os.chmod(d.workdir / "artifacts", 0o777),
        lambda d: (d.outputs / "other").write_text("x"),
        lambda d: os.symlink("/etc", d.outputs / "step-1"),
        lambda d: os.rmdir(d.workdir / "artifacts"),
    ],
    ids=["file", "artifact", "dir", "mode", "artifacts-mode", "outputs-file", "outputs-symlink", "no-artifacts"],
)
def test_directories_a_run_changed_are_removed_not_kept(pool, leave):
    dirs = pool.acquire("run1")
    leave(dirs)
    pool.release(dirs, reusable=True)
    assert names(pool.root) == [] and pool.idle == []


def test_directories_are_not_kept_when_a_process_of_the_run_may_still_write_there(pool):
    dirs = pool.acquire("run1")
    pool.release(dirs, reusable=False)
    assert names(pool.root) == [] and pool.idle == []


def test_a_step_file_linked_elsewhere_or_opened_up_is_not_reused(pool, tmp_path):
    dirs = pool.acquire("run1")
    step_file(dirs.outputs / "step-0", "")
    os.link(dirs.outputs / "step-0", tmp_path / "kept-by-the-step")
    step_file(dirs.outputs / "step-1", "")
    os.chmod(dirs.outputs / "step-1", 0o666)
    pool.release(dirs, reusable=True)
    again = pool.acquire("run2")
    assert names(again.outputs) == []  # the next run's steps get files of their own
    assert (tmp_path / "kept-by-the-step").exists()


def test_a_kept_pair_that_vanished_is_replaced_by_new_directories(pool):
    pool.release(pool.acquire("run1"), reusable=True)
    for name in names(pool.root):
        os.rename(pool.root / name, pool.root.parent / name)  # gone from under the pool
    dirs = pool.acquire("run2")
    assert names(dirs.workdir) == ["artifacts"] and names(pool.root) == ["run2", "run2.outputs"]


def test_close_removes_what_is_kept_and_a_run_ending_after_it_keeps_nothing(pool):
    pool.release(pool.acquire("run1"), reusable=True)
    late = pool.acquire("run2")
    pool.close()
    assert names(pool.root) == ["run2", "run2.outputs"]
    pool.release(late, reusable=True)
    assert names(pool.root) == []


def test_a_starting_process_sweeps_what_gone_processes_kept_and_leaves_live_ones(pool):
    pool.release(pool.acquire("run1"), reusable=True)
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    for name in (f"{IDLE_PREFIX}{gone.pid}.123.1", f"{IDLE_PREFIX}{gone.pid}.123.1.outputs"):
        (pool.root / name).mkdir()
        (pool.root / name / "f").write_text("x")
    other = WorkDirPool(pool.root)
    assert sorted(other.sweep()) == [f"{IDLE_PREFIX}{gone.pid}.123.1", f"{IDLE_PREFIX}{gone.pid}.123.1.outputs"]
    mine = f"{IDLE_PREFIX}{os.getpid()}.{process_start(os.getpid())}.1"
    assert names(pool.root) == [mine, mine + ".outputs"]
