"""URL and ref validation for git sources, and the git-level guards behind it."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import git
import pytest

from flwd_server.config import GitSettings
from flwd_server.errors import UnsafeSource
from flwd_server.sources.git import GitSource
from flwd_server.sources.safety import git_allow_protocol, ref_problem, url_problem
from tests.fixtures.helpers import require_tool

DEFAULT = GitSettings().allowed_schemes

ACCEPTED_URLS = [
    "https://git.example.org/tools.git",
    "ssh://git@git.example.org/tools.git",
    "ssh://git@git.example.org:2222/tools.git",
    "git://git.example.org/tools.git",
    "git@git.example.org:team/tools.git",
    "file:///home/me/repos/tools",
    "file://localhost/srv/tools",
    "https://[::1]:8443/tools.git",
    "HTTPS://git.example.org/tools.git",
]

REFUSED_URLS = {
    "ext::sh -c touch% /tmp/pwned": "transport",
    "ext::sh": "transport",
    "fd::17": "transport",
    "fd::0,1": "transport",
    "ext://whatever": "transport",
    "EXT::sh": "transport",
    "::sh": "transport",
    "foo::https://git.example.org/x": "transport",
    "--upload-pack=touch /tmp/pwned": "'-'",
    "-utouch /tmp/pwned": "'-'",
    "-c core.sshCommand=touch": "'-'",
    "https://host/repo --upload-pack=x": "whitespace",
    "https://host/re\npo": "whitespace",
    "https://host/re\x00po": "whitespace",
    "http://git.example.org/tools.git": "not allowed",
    "ftp://git.example.org/tools.git": "not allowed",
    "/srv/repo": "plain paths",
    "../x": "plain paths",
    "repo": "plain paths",
    "file://evil.example.org/x": "this machine",
    "file://": "absolute path",
    "ssh://-oProxyCommand=touch%20x/repo": "'-'",
    "ssh://-oProxyCommand=x@host/repo": "'-'",
    "https:///no-host": "must not be empty",
    "-oProxyCommand=x:repo": "'-'",
    "git@-oProxyCommand=x:repo": "'-'",
    "": "expected a git URL",
    "https://x/" + "a" * 3000: "longer than",
}


@pytest.mark.parametrize("url", ACCEPTED_URLS)
def test_ordinary_git_urls_are_accepted(url):
    assert url_problem(url, DEFAULT) is None


@pytest.mark.parametrize("url,reason", sorted(REFUSED_URLS.items()))
def test_unsafe_urls_are_refused_with_the_reason(url, reason):
    problem = url_problem(url, DEFAULT)
    assert problem is not None and reason in problem


def test_allowed_schemes_are_configurable_but_ext_and_fd_never_are():
    assert url_problem("http://git.example.org/x", ("http",)) is None
    assert "not allowed" in url_problem("https://git.example.org/x", ("http",))
    assert "not allowed" in url_problem("file:///etc", ("https",))
    assert "ssh" in url_problem("git@evil:x", ("https",))
    assert "transport" in url_problem("ext::sh", ("ext", "https"))
    assert "transport" in url_problem("ext://x/y", ("https",))
    assert git_allow_protocol(("https", "ext", "fd", "file")) == "file:https"


ACCEPTED_REFS = [
    "main",
    "v1.0",
    "feature/x",
    "release-2026.01",
    "HEAD",
    "refs/heads/main",
    "refs/tags/v1",
    "a" * 40,
    "0123abc",
]
REFUSED_REFS = [
    "--output=/tmp/p",
    "-h",
    "-uX",
    "../../etc/passwd",
    "/dev/zero",
    "refs/heads/../../x",
    "main..x",
    "a b",
    "a\nb",
    "a\tb",
    "a.lock",
    ".hidden",
    "a/.b",
    "a//b",
    "a/",
    "a.",
    "@",
    "a@{1}",
    "a~1",
    "a^",
    "a:b",
    "a?b",
    "a*b",
    "a[b",
    "a\\b",
    "refs/remotes/origin/main",
    "",
    "x" * 300,
]


@pytest.mark.parametrize("ref", ACCEPTED_REFS)
def test_branches_tags_and_commits_are_accepted(ref):
    assert ref_problem(ref) is None


@pytest.mark.parametrize("ref", REFUSED_REFS)
def test_refs_that_smuggle_options_or_paths_are_refused(ref):
    assert ref_problem(ref) is not None


def test_every_ref_git_refuses_is_refused_here_too():
    """Our rules are at least as strict as ``git check-ref-format --allow-onelevel``."""
    require_tool("git")
    for ref in REFUSED_REFS + ACCEPTED_REFS:
        if not ref or "\n" in ref:
            continue
        git_ok = (
            subprocess.run(["git", "check-ref-format", "--allow-onelevel", ref], capture_output=True).returncode == 0
        )
        if not git_ok:
            assert ref_problem(ref) is not None, ref
    for ref in ("main", "v1.0", "feature/x", "refs/heads/main"):
        assert subprocess.run(["git", "check-ref-format", "--allow-onelevel", ref], capture_output=True).returncode == 0


def test_a_git_source_with_an_unsafe_url_or_ref_is_refused_before_anything_is_written(tmp_path):
    marker = tmp_path / "pwned"
    for spec in (
        {"type": "git", "name": "evil", "url": f"ext::sh -c touch% {marker}"},
        {"type": "git", "name": "evil", "url": "file:///srv/x", "ref": "--upload-pack=touch /tmp/x"},
    ):
        with pytest.raises(UnsafeSource):
            GitSource("evil", spec, data_dir=tmp_path / "data", git=GitSettings())
    assert not marker.exists()
    assert not (tmp_path / "data").exists()


def test_gitpython_itself_refuses_ext_urls_and_upload_pack_options(tmp_path):
    """Defence in depth: the GitPython we depend on refuses these on its own."""
    require_tool("git")
    marker = tmp_path / "pwned"
    with pytest.raises(git.exc.UnsafeProtocolError):
        git.Repo.clone_from(f"ext::sh -c touch% {marker}", tmp_path / "clone")
    for options in (["--upload-pack=touch " + str(marker)], ["-utouch " + str(marker)], ["--upl=touch " + str(marker)]):
        with pytest.raises(git.exc.UnsafeOptionError):
            git.Repo.clone_from("https://git.example.org/x.git", tmp_path / "clone2", multi_options=options)
    assert not marker.exists()


def test_git_itself_refuses_ext_under_the_environment_flwd_gives_it(tmp_path):
    """GIT_ALLOW_PROTOCOL makes git refuse the ext transport even if a URL got past every check."""
    require_tool("git")
    marker = tmp_path / "pwned"
    source = GitSource("s", {"type": "git", "name": "s", "url": "file:///srv/x"}, data_dir=tmp_path, git=GitSettings())
    env = {**os.environ, **source.environment()}
    assert env["GIT_ALLOW_PROTOCOL"] == "file:git:https:ssh"
    done = subprocess.run(
        ["git", "ls-remote", f"ext::sh -c touch% {marker}"], env=env, capture_output=True, text=True, timeout=30
    )
    assert done.returncode != 0
    assert "not allowed" in done.stderr
    assert not marker.exists()


def test_job_files_never_leave_the_checkout(tmp_path: Path):
    """A symlink committed to point outside is listed as an error, never read."""
    from flwd_server.sources.base import scan_jobs

    root = tmp_path / "checkout"
    (root / "jobs").mkdir(parents=True)
    (root / "jobs" / "leak.yaml").symlink_to("/etc/passwd")
    (root / "jobs" / "ok.yaml").write_text("name: ok\nsteps: [{name: s, run: 'true'}]\n")
    snap = scan_jobs("s", root, "r", 60)
    assert list(snap.jobs) == ["ok"]
    assert snap.errors[0]["path"] == "jobs/leak.yaml" and "outside the source root" in snap.errors[0]["message"]
