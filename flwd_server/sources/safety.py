"""What a git source may name: URLs and refs are checked here, before git ever runs.

GitPython refuses ``ext::`` URLs and known unsafe options on its high-level
calls, but a value that reaches ``repo.git.<cmd>(...)`` bypasses every check
(a URL such as ``ext::sh -c ...`` runs a command; an option in a ref is an
option).  So flwd validates the user's URL and ref itself and only
ever hands git values that passed, plus constants of its own:

* a URL must use a scheme from ``git.allowed_schemes``; ``<transport>::``
  URLs (``ext::``, ``fd::``), plain local paths, leading ``-`` (options such
  as ``--upload-pack``), whitespace and control characters are refused;
* a ref follows ``git check-ref-format --allow-onelevel`` and must not start
  with ``-`` or ``/``; ``..`` is refused everywhere.
"""

from __future__ import annotations

import re

from ..errors import UnsafeSource

NEVER_ALLOWED = frozenset({"ext", "fd"})
MAX_URL_LENGTH = 2048
MAX_REF_LENGTH = 255
COMMIT_RE = re.compile(r"[0-9a-f]{40}([0-9a-f]{24})?")
ABBREV_COMMIT_RE = re.compile(r"[0-9a-f]{7,64}")
_TRANSPORT_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9+.-]*::|^::")
_SCHEME_RE = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://(.*)", re.DOTALL)
_SCP_RE = re.compile(r"(?:(?P<user>[^@/:]+)@)?(?P<host>[^@/:\[\]]+|\[[^\]/]+\]):(?P<path>.*)", re.DOTALL)
_REF_BAD_CHARS = re.compile(r"[\x00-\x20\x7f~^:?*\[\\]")


def url_problem(url: object, allowed_schemes: tuple[str, ...] | list[str]) -> str | None:
    """Why ``url`` is refused as a git source URL, or None when it is acceptable."""
    allowed = {s.lower() for s in allowed_schemes} - NEVER_ALLOWED
    if not isinstance(url, str) or not url:
        return "expected a git URL such as https://host/repo.git or file:///srv/repo"
    if len(url) > MAX_URL_LENGTH:
        return f"longer than {MAX_URL_LENGTH} characters"
    if _TRANSPORT_RE.match(url) or url.lower().startswith(("ext:", "fd:")):
        return "remote-helper transports ('<transport>::' URLs such as ext:: and fd::) can run commands and are refused"
    if url.startswith("-"):
        return "must not start with '-' (git would read it as an option such as --upload-pack)"
    if any(c.isspace() or ord(c) < 32 or ord(c) == 127 for c in url):
        return "must not contain whitespace or control characters"
    allowed_text = ", ".join(sorted(allowed)) or "none"
    match = _SCHEME_RE.fullmatch(url)
    if match:
        scheme, rest = match.group(1).lower(), match.group(2)
        if scheme == "oci":  # not a git transport at all: the add-on kind has its own body
            return (
                'oci:// is not a git URL; register an OCI add-on as {"type": "oci", "name": ..., '
                '"ref": "registry/repo:tag"} (flwd :sources add NAME --oci REF)'
            )
        if scheme not in allowed:
            return f"the {scheme!r} scheme is not allowed (git.allowed_schemes: {allowed_text})"
        authority, _, path = rest.partition("/")
        if scheme == "file":
            if authority not in ("", "localhost"):
                return "file URLs name a path on this machine: file:///abs/path"
            if not path or path.startswith("-"):
                return "file URLs need an absolute path: file:///abs/path"
            return None
        user, _, host = authority.rpartition("@")
        if not host or host.startswith("-") or user.startswith("-"):
            return "the host (and user) of the URL must not be empty or start with '-'"
        return None
    scp = _SCP_RE.fullmatch(url)
    if scp and "/" not in url.split(":", 1)[0]:
        if "ssh" not in allowed:
            return (
                f"scp-style 'user@host:path' URLs use ssh, which is not allowed (git.allowed_schemes: {allowed_text})"
            )
        if any((scp.group(part) or "").startswith("-") for part in ("user", "host", "path")):
            return "no part of the URL may start with '-'"
        return None
    return "plain paths are not accepted for git sources; use a file:///abs/path URL (or a local source)"


def require_safe_url(url: object, allowed_schemes: tuple[str, ...] | list[str], field: str = "url") -> str:
    problem = url_problem(url, allowed_schemes)
    if problem:
        raise UnsafeSource(f"{field}: {problem}", errors=[{"field": field, "message": problem}])
    assert isinstance(url, str)
    return url


def ref_problem(ref: object) -> str | None:
    """Why ``ref`` is refused (git check-ref-format rules, one-level names allowed), or None."""
    if not isinstance(ref, str) or not ref:
        return "expected a branch, tag or commit"
    if len(ref) > MAX_REF_LENGTH:
        return f"longer than {MAX_REF_LENGTH} characters"
    if ref.startswith("-"):
        return "must not start with '-' (git would read it as an option)"
    if ref.startswith("/"):
        return "must not be an absolute path"
    if ".." in ref:
        return "must not contain '..'"
    if _REF_BAD_CHARS.search(ref):
        return "must not contain whitespace, control characters or any of ~ ^ : ? * [ \\"
    if ref == "@" or "@{" in ref:
        return "must not be '@' or contain '@{'"
    if ref.endswith(("/", ".")) or "//" in ref:
        return "must not end with '/' or '.', nor contain '//'"
    for part in ref.split("/"):
        if part.startswith("."):
            return "no part of it may start with '.'"
        if part.endswith(".lock"):
            return "no part of it may end with '.lock'"
    if ref.startswith("refs/") and not ref.startswith(("refs/heads/", "refs/tags/")):
        return "full ref names must be under refs/heads/ or refs/tags/"
    return None


def require_safe_ref(ref: object, field: str = "ref") -> str:
    problem = ref_problem(ref)
    if problem:
        raise UnsafeSource(f"{field}: {problem}", errors=[{"field": field, "message": problem}])
    assert isinstance(ref, str)
    return ref


def git_allow_protocol(allowed_schemes: tuple[str, ...] | list[str]) -> str:
    """The GIT_ALLOW_PROTOCOL value: git itself refuses every other transport (submodules too)."""
    return ":".join(sorted({s.lower() for s in allowed_schemes} - NEVER_ALLOWED))
