"""Git sources against real repositories: refs, revisions, timeouts, submodules, leaks."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from flwd_server.config import GitSettings
from flwd_server.errors import SourceError
from flwd_server.sources.git import GitSource
from tests.fixtures.git import git_processes, job_yaml


def make_source(repo_url: str, data_dir: Path, ref: str | None = "main", **git: object) -> GitSource:
    spec = {"type": "git", "name": "tools", "url": repo_url}
    if ref is not None:
        spec["ref"] = ref
    return GitSource("tools", spec, data_dir=data_dir, git=GitSettings(**git))


@pytest.fixture
def repo(make_git_repo):
    repo = make_git_repo("tools")
    repo.write("jobs/hello.yaml", job_yaml("hello", "echo one", "version one")).write("VERSION", "one\n")
    repo.commit("one")
    return repo


def test_a_sync_resolves_the_branch_to_a_commit_and_exports_that_commit(repo, tmp_path):
    source = make_source(repo.url, tmp_path)
    snap = source.sync()
    assert snap.revision == repo.head()
    assert snap.jobs["hello"].revision == repo.head()
    assert snap.jobs["hello"].description == "version one"
    tree = Path(source.checkout_for(snap.revision))
    assert tree == tmp_path / "sources" / "tools" / "revs" / repo.head()
    assert (tree / "VERSION").read_text() == "one\n"
    assert not (tree / ".git").exists()


def test_a_new_commit_is_served_after_sync_and_the_old_export_stays_until_pruned(repo, tmp_path):
    source = make_source(repo.url, tmp_path)
    first = source.sync().revision
    repo.write("jobs/hello.yaml", job_yaml("hello", "echo two", "version two")).write("VERSION", "two\n")
    second = repo.commit("two")
    assert source.snapshot().revision == first  # nothing changes until a sync
    snap = source.sync()
    assert snap.revision == second and snap.jobs["hello"].description == "version two"
    assert (Path(source.checkout_for(first)) / "VERSION").read_text() == "one\n"
    source.prune({second})
    assert not (source.revs_dir / first).exists()
    assert (Path(source.checkout_for(first)) / "VERSION").read_text() == "one\n"  # exported again on demand


def test_tags_old_commits_and_the_remote_head_can_be_followed(repo, tmp_path):
    first = repo.head()
    repo.tag("v1")
    repo.write("VERSION", "two\n")
    second = repo.commit("two")
    assert make_source(repo.url, tmp_path / "a", ref="v1").sync().revision == first
    assert make_source(repo.url, tmp_path / "b", ref="refs/tags/v1").sync().revision == first
    assert make_source(repo.url, tmp_path / "c", ref=first).sync().revision == first
    assert make_source(repo.url, tmp_path / "d", ref=first[:10]).sync().revision == first
    assert make_source(repo.url, tmp_path / "e", ref=None).sync().revision == second


def test_an_unknown_ref_is_a_clear_error(repo, tmp_path):
    with pytest.raises(SourceError, match="has no branch, tag or commit 'nope'"):
        make_source(repo.url, tmp_path, ref="nope").sync()


def test_a_hung_remote_is_killed_after_the_git_timeout(tmp_path, silent_git_server):
    source = make_source(silent_git_server.url, tmp_path, timeout=1.0)
    started = time.monotonic()
    with pytest.raises(SourceError, match="(?i)timeout|timed out"):
        source.sync()
    assert time.monotonic() - started < 20
    assert silent_git_server.connections, "git never connected: the test proved nothing"
    assert git_processes(parent=os.getpid()) == []


def test_submodules_are_never_fetched(repo, make_git_repo, tmp_path):
    inner = make_git_repo("inner")
    inner.write("secret.txt", "inner\n").commit("inner")
    repo.git("-c", "protocol.file.allow=always", "submodule", "--quiet", "add", inner.url, "vendor/inner")
    repo.commit("add a submodule")
    source = make_source(repo.url, tmp_path)
    tree = Path(source.checkout_for(source.sync().revision))
    assert (tree / ".gitmodules").exists()
    assert not (tree / "vendor" / "inner" / "secret.txt").exists()


def test_concurrent_syncs_through_the_source_lock_all_succeed(repo, tmp_path):
    from flwd_server.sources.locking import source_lock

    results: list[object] = []

    def sync_once() -> None:
        source = make_source(repo.url, tmp_path)  # one object per thread, as two workers would have
        try:
            with source_lock(tmp_path, "tools"):
                results.append(source.sync().revision)
        except Exception as exc:  # collected and asserted below
            results.append(exc)

    threads = [threading.Thread(target=sync_once) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert results == [repo.head()] * 8


def test_many_operations_leave_no_git_process_behind(repo, tmp_path):
    source = make_source(repo.url, tmp_path)
    for i in range(20):
        repo.write("VERSION", f"{i}\n").commit(f"c{i}")
        source.sync()
        source.checkout_for(source.revision)
    assert git_processes(parent=os.getpid()) == []
    fds = len(os.listdir("/proc/self/fd"))
    for _ in range(20):
        source.sync()
    assert len(os.listdir("/proc/self/fd")) <= fds + 2
    assert git_processes(parent=os.getpid()) == []


def test_a_node_without_the_commit_another_node_synced_fetches_that_exact_commit(repo, tmp_path):
    """Several nodes, one database, a clone each: node B serves and runs node A's revision."""
    node_a = make_source(repo.url, tmp_path / "node-a")
    first = node_a.sync().revision
    repo.write("jobs/hello.yaml", job_yaml("hello", "echo two", "version two")).write("VERSION", "two\n").commit("two")

    node_b = make_source(repo.url, tmp_path / "node-b")  # never synced: no clone at all
    node_b.load_state({"revision": first})  # what the database says (node A's sync)
    snap = node_b.snapshot()
    assert snap.revision == first and snap.errors == ()
    assert snap.jobs["hello"].description == "version one"  # not the branch's newer commit
    assert (Path(node_b.checkout_for(first)) / "VERSION").read_text() == "one\n"

    second = node_a.sync().revision  # node A moves on; node B's clone is behind
    assert second != first
    assert (Path(node_b.checkout_for(second)) / "VERSION").read_text() == "two\n"
    assert node_b.checkout_for("0" * 40) is None  # a commit nobody has: no files, no crash
    assert git_processes(parent=os.getpid()) == []
