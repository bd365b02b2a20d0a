"""A source that is a git repository, fetched with GitPython and served one commit at a time.

On disk, under ``DATA_DIR/sources/NAME/``:

* ``repo.git`` - a bare repository; each sync fetches branches and tags into it;
* ``revs/COMMIT`` - the files of one commit, exported once and never changed.

A sync resolves the ref to a commit and exports that commit; jobs carry the
commit as their ``revision``.  A run keeps the job it was planned with (the
plan record) and ``FLWD_SOURCE_DIR`` points at its own commit's export, so a
sync during a run changes nothing for that run.  A failed sync leaves the
last good commit serving.

Only validated values (see ``safety.py``) and flwd's own constants reach git.
Every git process gets ``GIT_ALLOW_PROTOCOL`` (git itself refuses other
transports, submodule URLs included), no hooks, no submodules, no prompts,
and is killed with its children after ``git.timeout`` seconds.  Each
:class:`git.Repo` is closed after use, so no ``git cat-file`` process is
left behind.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from git import GitCommandError, Remote, Repo
from git.exc import GitError

from ..config import GitSettings
from ..errors import FlwdError, SourceError, StorageError, UnsafeSource, disk_error
from ..logs import redact_url
from .base import Source, SourceSnapshot, scan_jobs
from .locking import source_lock
from .safety import ABBREV_COMMIT_RE, COMMIT_RE, git_allow_protocol, require_safe_ref, require_safe_url

log = logging.getLogger("flwd.sources.git")

REMOTE = "origin"
REMOTE_HEAD = "refs/flwd/remote-head"
PINNED = "refs/flwd/pinned"
FETCH_REFSPECS = ("+refs/heads/*:refs/heads/*", "+refs/tags/*:refs/tags/*", f"+HEAD:{REMOTE_HEAD}")
# -c options on every git call: no hooks, no submodules, no automatic gc
# (an old commit a run still uses must stay).
GIT_CONFIG = (
    "core.hooksPath=/dev/null",
    "submodule.recurse=false",
    "fetch.recurseSubmodules=false",
    "gc.auto=0",
)


def _git_error(exc: BaseException, url: str) -> str:
    """A short, credential-free message out of a git failure."""
    if isinstance(exc, GitCommandError):
        text = exc.stderr if isinstance(exc.stderr, str) else str(exc.stderr or "")
        text = text.strip().removeprefix("stderr:").strip().strip("'").strip()
        if text.startswith("Timeout:"):
            return "git did not finish in time (git.timeout); the remote may be hung or unreachable"
        lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
        picked = [ln for ln in lines if ln.startswith(("fatal:", "error:", "Timeout:"))] or lines[-2:]
        message = "; ".join(picked) or f"git exited with {exc.status}"
    else:
        message = f"{type(exc).__name__}: {exc}"
    message = message.replace(url, redact_url(url))
    return message[:500]


class GitSource(Source):
    kind = "git"

    def __init__(
        self,
        name: str,
        spec: dict[str, Any],
        *,
        data_dir: Path,
        git: GitSettings,
        default_timeout: float = 3600,
        state: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(name, spec)
        self.git_settings = git
        self.url = require_safe_url(spec.get("url"), git.allowed_schemes)
        self.ref = require_safe_ref(spec["ref"]) if spec.get("ref") is not None else "HEAD"
        self.data_dir = Path(data_dir)
        self.root = self.data_dir / "sources" / name
        self.repo_dir = self.root / "repo.git"
        self.revs_dir = self.root / "revs"
        self.default_timeout = default_timeout
        self.state: dict[str, Any] = dict(state or {})
        self._snapshots: dict[str, SourceSnapshot] = {}
        self._lock = threading.Lock()

    # -- state shared through the database ----------------------------------------

    @property
    def revision(self) -> str | None:
        return self.state.get("revision")

    def load_state(self, state: dict[str, Any]) -> None:
        self.state = dict(state)

    def environment(self) -> dict[str, str]:
        env = {
            "GIT_ALLOW_PROTOCOL": git_allow_protocol(self.git_settings.allowed_schemes),
            "GIT_TERMINAL_PROMPT": "0",
        }
        if "GIT_SSH_COMMAND" not in os.environ:
            env["GIT_SSH_COMMAND"] = "ssh -o BatchMode=yes"
        return env

    def _git(self, repo: Repo, *args: str, env: dict[str, str] | None = None) -> str:
        """Run git on the bare repository: flwd's constants and validated values only."""
        command = ["git", f"--git-dir={self.repo_dir}"]
        for option in GIT_CONFIG:
            command += ["-c", option]
        command += list(args)
        return repo.git.execute(
            command,
            env={**self.environment(), **(env or {})},
            kill_after_timeout=self.git_settings.timeout,
            strip_newline_in_stdout=True,
        )

    # -- the Source interface ---------------------------------------------------------

    def snapshot(self) -> SourceSnapshot:
        revision = self.revision
        if revision is None:
            why = self.state.get("last_error") or "not synced yet"
            error = {"path": "", "field": "(source)", "message": f"no revision to serve: {why}"}
            return SourceSnapshot(self.name, None, None, {}, (error,))
        with self._lock:
            cached = self._snapshots.get(revision)
        if cached is not None:
            return cached
        try:
            tree = self.checkout_for(revision)
        except StorageError as exc:  # our disk refused the export: shown, not cached; the next look tries again
            return SourceSnapshot(
                self.name, revision, None, {}, ({"path": "", "field": "(source)", "message": exc.detail},)
            )
        if tree is None:
            error = {
                "path": "",
                "field": "(source)",
                "message": f"commit {revision} is missing from the local clone; sync the source",
            }
            return SourceSnapshot(self.name, revision, None, {}, (error,))
        snap = scan_jobs(self.name, tree, revision, self.default_timeout)
        with self._lock:
            self._snapshots = {revision: snap}  # commits never change: one scan each
        return snap

    def checkout_for(self, revision: str | None) -> str | None:
        """The exported tree of ``revision``: exported again if it was pruned, fetched if missing.

        None when git cannot give it; a :class:`StorageError` when our own disk cannot hold it
        (read-only, full), so that a run fails saying where instead of going on without its files.

        Several nodes share one database but each has its own clone: a source
        synced on node A names a commit node B may never have fetched.  B then
        fetches (and, if no branch or tag reaches it any more, asks for that
        exact commit) before exporting, so every node runs the same revision.
        """
        if revision is None or not COMMIT_RE.fullmatch(revision):
            return None
        tree = self.revs_dir / revision
        if tree.is_dir():
            return str(tree)
        try:
            with source_lock(self.data_dir, self.name, timeout=self.git_settings.timeout * 2):
                if tree.is_dir():  # another thread or process got it meanwhile
                    return str(tree)
                if not (self.repo_dir / "HEAD").is_file():
                    self.revs_dir.mkdir(parents=True, exist_ok=True)
                    self._create_repo()
                with Repo(self.repo_dir) as repo:
                    if self._rev_parse(repo, revision) is None:
                        self._fetch_commit(repo, revision)
                    self._export(repo, revision)
        except StorageError:
            raise
        except GitError as exc:  # before OSError: GitPython's NoSuchPathError is both
            log.warning("source %s: cannot export %s: %s", self.name, revision, _git_error(exc, self.url))
            return None
        except OSError as exc:
            raise disk_error(f"source {self.name!r}: could not export commit {revision} to", tree, exc) from None
        except FlwdError as exc:
            log.warning("source %s: cannot export %s: %s", self.name, revision, exc.detail)
            return None
        return str(tree)

    def _fetch_commit(self, repo: Repo, commit: str) -> None:
        """Fetch so that ``commit`` is in the clone: branches and tags first, then the commit by id."""
        log.info("source %s: fetching %s, which another node synced", self.name, commit)
        self._fetch(repo)
        if self._rev_parse(repo, commit) is None:
            try:
                self._git(
                    repo,
                    "fetch",
                    "--quiet",
                    "--no-recurse-submodules",
                    "--no-write-fetch-head",
                    "--end-of-options",
                    REMOTE,
                    f"+{commit}:{PINNED}",
                )
            except GitCommandError as exc:
                raise SourceError(
                    f"source {self.name!r}: {redact_url(self.url)} does not serve commit {commit}: {_git_error(exc, self.url)}"
                ) from None

    def sync(self) -> SourceSnapshot:
        """Fetch, resolve the ref, export its commit.  The caller holds the source lock."""
        started = time.monotonic()
        try:
            self.revs_dir.mkdir(parents=True, exist_ok=True)
            if not (self.repo_dir / "HEAD").is_file():
                self._create_repo()
            with Repo(self.repo_dir) as repo:
                self._fetch(repo)
                commit = self._resolve(repo)
                self._export(repo, commit)
        except GitError as exc:  # before OSError: GitPython's NoSuchPathError is both
            raise SourceError(
                f"source {self.name!r}: fetching {redact_url(self.url)} failed: {_git_error(exc, self.url)}"
            ) from None
        except OSError as exc:  # our own clone could not be written (read-only, full): a 503, not the remote's fault
            raise disk_error(f"source {self.name!r}: could not write its clone under", self.root, exc) from None
        self.state = {**self.state, "revision": commit}
        log.info("source %s synced to %s in %.2fs", self.name, commit, time.monotonic() - started)
        return self.snapshot()

    def describe(self) -> dict[str, Any]:
        out = super().describe()
        out["url"] = redact_url(self.url)
        out["ref"] = self.spec.get("ref")
        return out

    # -- git --------------------------------------------------------------------------------

    def _create_repo(self) -> None:
        if self.repo_dir.exists():
            shutil.rmtree(self.repo_dir)
        self.repo_dir.mkdir(parents=True)
        with Repo.init(self.repo_dir, bare=True, mkdir=False) as repo:
            Remote.create(repo, REMOTE, self.url)  # GitPython's own transport check, on top of ours

    def _fetch(self, repo: Repo) -> None:
        configured = repo.remote(REMOTE).url
        if configured != self.url:  # the spec changed under the same name: start over
            raise UnsafeSource(
                f"source {self.name!r}: the clone belongs to another URL; remove and add the source again"
            )
        self._git(
            repo,
            "fetch",
            "--quiet",
            "--prune",
            "--no-recurse-submodules",
            "--no-write-fetch-head",
            "--end-of-options",
            REMOTE,
            *FETCH_REFSPECS,
        )

    def _rev_parse(self, repo: Repo, name: str) -> str | None:
        try:
            out = self._git(repo, "rev-parse", "--verify", "--quiet", "--end-of-options", f"{name}^{{commit}}")
        except GitCommandError:
            return None
        out = out.strip()
        return out if COMMIT_RE.fullmatch(out) else None

    def _resolve(self, repo: Repo) -> str:
        ref = self.ref
        if ref == "HEAD":
            candidates = [REMOTE_HEAD]
        elif ref.startswith(("refs/heads/", "refs/tags/")):
            candidates = [ref]
        else:
            candidates = [f"refs/heads/{ref}", f"refs/tags/{ref}"]
        for name in candidates:
            commit = self._rev_parse(repo, name)
            if commit:
                return commit
        if ABBREV_COMMIT_RE.fullmatch(ref):
            commit = self._rev_parse(repo, ref)
            if commit is None and COMMIT_RE.fullmatch(ref):
                # A commit no branch or tag reaches: ask for it by id (the server must allow it).
                try:
                    self._git(
                        repo,
                        "fetch",
                        "--quiet",
                        "--no-recurse-submodules",
                        "--no-write-fetch-head",
                        "--end-of-options",
                        REMOTE,
                        f"+{ref}:{PINNED}",
                    )
                except GitCommandError:
                    pass
                commit = self._rev_parse(repo, ref)
            if commit:
                return commit
        raise SourceError(
            f"source {self.name!r}: {redact_url(self.url)} has no branch, tag or commit {ref!r}", field="ref"
        )

    def _export(self, repo: Repo, commit: str) -> None:
        """Write the files of ``commit`` to ``revs/COMMIT`` (atomically: a temp dir, then rename)."""
        target = self.revs_dir / commit
        if target.is_dir():
            return
        self.revs_dir.mkdir(parents=True, exist_ok=True)
        temp = self.revs_dir / f".tmp-{commit[:12]}-{uuid.uuid4().hex[:8]}"
        index = self.revs_dir / f".index-{uuid.uuid4().hex[:8]}"
        temp.mkdir()
        try:
            self._git(repo, "read-tree", "--end-of-options", commit, env={"GIT_INDEX_FILE": str(index)})
            self._git(
                repo, f"--work-tree={temp}", "checkout-index", "--all", "--force", env={"GIT_INDEX_FILE": str(index)}
            )
            os.rename(temp, target)
        except OSError:
            if not target.is_dir():
                raise
        finally:
            index.unlink(missing_ok=True)
            if temp.exists():
                shutil.rmtree(temp, ignore_errors=True)

    def prune(self, keep: set[str]) -> list[str]:
        """Remove exported commits not in ``keep``; the caller holds the source lock."""
        removed = []
        if not self.revs_dir.is_dir():
            return removed
        for entry in self.revs_dir.iterdir():
            if entry.name in keep:
                continue
            if entry.name.startswith(".") or COMMIT_RE.fullmatch(entry.name):
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry, ignore_errors=True)
                else:
                    entry.unlink(missing_ok=True)
                removed.append(entry.name)
        return removed
