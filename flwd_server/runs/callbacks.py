"""Run callbacks: which URLs a run may ask to be POSTed to, and how the POST is signed.

A callback URL is allowed only if it falls under one of ``callbacks.allowed_urls``,
compared as parsed URLs, never as strings: the scheme, the host and the port
exactly (``https://h/`` is ``https://h:443/``), the path on whole segments
(``/ci`` allows ``/ci`` and ``/ci/x``, not ``/cix``).  Anything a parser and a
receiver might read differently is refused outright: userinfo
(``https://allowed@evil/``), fragments, backslashes, control characters and
spaces, non-ASCII, dot segments, schemes other than http(s), and over-long URLs.
A query string is allowed (it may carry the receiver's token) and is redacted
wherever the URL is shown.

The body is signed the way GitHub signs webhooks (``X-Flwd-Signature-256:
sha256=HEX``, an HMAC-SHA256 of the exact body bytes), keyed by the text of
``callbacks.secret_file``, so receivers can use the libraries they have.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import SplitResult, unquote, urlsplit

from ..config import CallbackSettings
from ..errors import ConfigError, Unavailable, Unprocessable

MAX_URL_LENGTH = 2048
DEFAULT_PORTS = {"http": 80, "https": 443}
_PRINTABLE_ASCII = re.compile(r"[\x21-\x7e]+")
_HOST = re.compile(r"[a-z0-9](?:[a-z0-9-]*[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]*[a-z0-9])?)*|\[[0-9a-f:.]+\]")
ALLOWED_SETTING = "callbacks.allowed_urls"
SECRET_SETTING = "callbacks.secret_file"


@dataclass(frozen=True)
class CallbackURL:
    """A URL taken apart the one way both the check and the delivery use."""

    scheme: str
    host: str  # lower-case; an IPv6 address in brackets
    port: int  # explicit, the scheme's default when the URL gives none
    segments: tuple[str, ...]  # the path's segments, as written (no decoding)

    def under(self, prefix: CallbackURL) -> bool:
        """Whether this URL falls under ``prefix``: the same origin, and the prefix's whole path segments first."""
        if (self.scheme, self.host, self.port) != (prefix.scheme, prefix.host, prefix.port):
            return False
        wanted = prefix.segments[:-1] if prefix.segments[-1:] == ("",) else prefix.segments  # "/ci/" is "/ci"
        return self.segments[: len(wanted)] == wanted


def parse_callback_url(url: str, *, allow_query: bool = True) -> CallbackURL:
    """Take ``url`` apart, or raise ValueError saying what is wrong with it."""
    if not isinstance(url, str) or not url:
        raise ValueError("expected an http:// or https:// URL")
    if len(url) > MAX_URL_LENGTH:
        raise ValueError(f"longer than {MAX_URL_LENGTH} characters")
    if not _PRINTABLE_ASCII.fullmatch(url):
        raise ValueError("contains spaces, control characters or non-ASCII characters (percent-encode them)")
    if "\\" in url:
        raise ValueError("contains a backslash")
    if "#" in url:
        raise ValueError("has a fragment (#...)")
    parts: SplitResult = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS or not url[len(scheme) :].startswith("://"):
        raise ValueError("expected an http:// or https:// URL")
    if "@" in parts.netloc:
        raise ValueError("has userinfo (user@ or user:password@ before the host)")
    if parts.query and not allow_query:
        raise ValueError("has a query string")
    host_port = parts.netloc.lower()
    match = re.fullmatch(r"(?P<host>\[[^\]]*\]|[^:]*)(?::(?P<port>[0-9]{1,5}))?", host_port)
    if not match or not _HOST.fullmatch(match.group("host")):
        raise ValueError("expected a host name, an IPv4 address or an [IPv6] address")
    port = int(match.group("port")) if match.group("port") else DEFAULT_PORTS[scheme]
    if not 0 < port < 65536:
        raise ValueError("the port is out of range")
    path = parts.path or "/"
    if not path.startswith("/"):
        raise ValueError("expected a path starting with /")
    segments = tuple(path[1:].split("/"))
    if any(unquote(segment) in (".", "..") or "%2f" in segment.lower() for segment in segments):
        raise ValueError("has a dot segment (/./ or /../) or an encoded slash in its path")
    return CallbackURL(scheme, match.group("host"), port, segments)


class CallbackPolicy:
    """The server's callback settings, checked once: which URLs pass, and the signing key."""

    def __init__(self, settings: CallbackSettings) -> None:
        self.settings = settings
        prefixes = []
        for i, entry in enumerate(settings.allowed_urls):
            try:
                prefixes.append(parse_callback_url(entry, allow_query=False))
            except ValueError as exc:
                raise ConfigError(f"{ALLOWED_SETTING}[{i}]", f"{entry!r}: {exc}") from None
        self.prefixes = tuple(prefixes)

    def check(self, url: object) -> str:
        """The URL a run may be called back at, or a 422 naming the field and the setting."""
        if not self.prefixes:
            raise self._refuse(f"this server allows no callbacks ({ALLOWED_SETTING} is empty)")
        if not self.settings.secret_file:
            raise self._refuse(f"this server has no signing key for callbacks ({SECRET_SETTING} is not set)")
        try:
            parsed = parse_callback_url(url)  # type: ignore[arg-type]
        except ValueError as exc:
            raise self._refuse(f"not a callback URL: {exc}") from None
        if not self._under_a_prefix(parsed):
            raise self._refuse(f"the URL is not under any of {ALLOWED_SETTING}")
        self.secret()  # a key that cannot be read is the server's fault: 503 now, not a failed delivery later
        return str(url)

    def allows(self, url: str) -> bool:
        """Whether ``url`` is still under the allow list (checked again at each attempt: the list may have shrunk)."""
        try:
            return self._under_a_prefix(parse_callback_url(url))
        except ValueError:
            return False

    def _under_a_prefix(self, parsed: CallbackURL) -> bool:
        return any(parsed.under(prefix) for prefix in self.prefixes)

    @staticmethod
    def _refuse(message: str) -> Unprocessable:
        return Unprocessable(f"callback.url: {message}", [{"field": "callback.url", "message": message}])

    def secret(self) -> bytes:
        """The signing key: the text of ``callbacks.secret_file`` without surrounding whitespace (read each time)."""
        path = self.settings.secret_file
        try:
            key = Path(path).read_bytes().strip() if path else b""
        except OSError as exc:
            raise Unavailable(f"{SECRET_SETTING} cannot be read ({exc.strerror}); callbacks cannot be signed") from None
        if not key:
            raise Unavailable(f"{SECRET_SETTING} is empty; callbacks cannot be signed")
        return key


def signature(secret: bytes, body: bytes) -> str:
    """``X-Flwd-Signature-256``: ``sha256=`` and the hex HMAC-SHA256 of the body (GitHub's webhook scheme)."""
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()
