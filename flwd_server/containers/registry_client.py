"""A small OCI distribution client: manifests and blobs, pulled and pushed, hashed as received.

What it guards against:

* ``Docker-Content-Digest`` is never trusted: the exact bytes received are
  hashed, and a manifest or blob whose bytes do not match the digest asked for
  is refused (:class:`DigestMismatch`).  Sizes are capped while reading.
* ``Accept`` names the OCI and Docker manifest and index types, so a registry
  does not down-convert or answer with a schema-1 manifest.
* Auth: a ``401`` with ``WWW-Authenticate: Bearer realm=…,service=…,scope=…``
  is answered by fetching a token from the realm (anonymously, or with Basic
  credentials) and retrying; ``token`` and ``access_token`` answers are both
  accepted.  ``Basic`` challenges get Basic credentials when there are any.
* Redirects (blob storage) are followed by hand, and an ``Authorization``
  header never crosses to another host.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urljoin, urlsplit

import requests

from ..errors import SourceError
from .images import DOCKER_HUB, ImageRef, normalize_registry

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
MANIFEST_TYPES = (OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_LIST)
INDEX_TYPES = (OCI_INDEX, DOCKER_LIST)
MAX_MANIFEST_BYTES = 4 * 1024 * 1024
MAX_REDIRECTS = 5
_DIGEST_RE = re.compile(r"sha256:[a-f0-9]{64}")
_CHALLENGE_RE = re.compile(r'(\w+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]+))')

Credentials = Callable[[str], "tuple[str, str] | None"]


class RegistryError(SourceError):
    """Raised when a registry cannot be reached or answers with an error."""

    slug = "registry-error"
    title = "Registry error"


class DigestMismatch(RegistryError):
    """Raised when the bytes a registry sent do not hash to the digest asked for."""

    slug = "digest-mismatch"
    title = "Digest mismatch"


class ManifestUnknown(RegistryError):
    """Raised when the registry has no such tag or digest (it answered 404)."""

    slug = "manifest-unknown"
    title = "No such image or tag"


class TooLarge(RegistryError):
    """Raised when a manifest or blob is larger than the cap for it."""

    slug = "artifact-too-large"
    title = "Artifact too large"


@dataclass(frozen=True)
class Manifest:
    """A manifest or index exactly as received: ``raw`` is what ``digest`` hashes."""

    digest: str
    media_type: str
    raw: bytes
    data: dict[str, Any]

    @property
    def is_index(self) -> bool:
        return self.media_type in INDEX_TYPES or "manifests" in self.data


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def parse_challenge(header: str) -> tuple[str, dict[str, str]]:
    """``Bearer realm="…",service="…"`` -> ``("bearer", {"realm": …, "service": …})``."""
    scheme, _, rest = header.strip().partition(" ")
    params = {
        m.group(1).lower(): (m.group(2) if m.group(2) is not None else m.group(3)).replace('\\"', '"')
        for m in _CHALLENGE_RE.finditer(rest)
    }
    return scheme.lower(), params


def _origin(url: str) -> tuple[str, str]:
    parts = urlsplit(url)
    return parts.scheme, parts.netloc.lower()


def registry_answer(response: requests.Response) -> str:
    """The registry's own words for an error answer (``manifest unknown``), or ``HTTP <status>``."""
    try:
        first = (response.json().get("errors") or [{}])[0]
        return str(first.get("message") or first.get("code") or f"HTTP {response.status_code}")[:200]
    except (ValueError, AttributeError, IndexError):
        return f"HTTP {response.status_code}"


class RegistryClient:
    """Talks the OCI distribution API to registries named by host[:port].

    ``insecure`` registries are reached over plain HTTP (loopback test
    registries); every other one over HTTPS with certificate checks.
    ``credentials(registry)`` may return ``(user, password)`` for Basic auth
    and token requests.
    """

    def __init__(
        self, insecure: tuple[str, ...] | list[str] = (), timeout: float = 30.0, credentials: Credentials | None = None
    ) -> None:
        self.insecure = {normalize_registry(r) for r in insecure}
        self.timeout = timeout
        self.credentials = credentials
        self._local = threading.local()
        self._sessions: list[requests.Session] = []
        self._tokens: dict[tuple[str, str], tuple[str, float]] = {}
        self._lock = threading.Lock()

    # -- plumbing ----------------------------------------------------------------

    @property
    def session(self) -> requests.Session:
        """One session per thread (requests sessions are not thread-safe)."""
        session = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = requests.Session()
            session.trust_env = False  # no proxies or .netrc credentials picked up behind our back
            with self._lock:
                self._sessions.append(session)
        return session

    def close(self) -> None:
        with self._lock:
            sessions, self._sessions = self._sessions, []
        for session in sessions:
            session.close()
        self._local = threading.local()

    def base_url(self, registry: str) -> str:
        registry = normalize_registry(registry)
        host = "registry-1.docker.io" if registry == DOCKER_HUB else registry
        scheme = "http" if registry in self.insecure else "https"
        return f"{scheme}://{host}"

    def _basic(self, registry: str) -> str | None:
        creds = self.credentials(registry) if self.credentials else None
        if not creds:
            return None
        return "Basic " + base64.b64encode(f"{creds[0]}:{creds[1]}".encode()).decode()

    def _token(self, registry: str, challenge: dict[str, str], scope: str) -> str:
        key = (registry, scope)
        with self._lock:
            cached = self._tokens.get(key)
        if cached and cached[1] > time.monotonic():
            return cached[0]
        realm = challenge.get("realm")
        if not realm or urlsplit(realm).scheme not in ("http", "https"):
            raise RegistryError(f"registry {registry} asked for a token but named no usable realm")
        if urlsplit(realm).scheme == "http" and registry not in self.insecure:
            raise RegistryError(f"registry {registry} sends token requests to plain-HTTP {realm}; refused")
        params = {"scope": scope}
        if challenge.get("service"):
            params["service"] = challenge["service"]
        headers = {}
        basic = self._basic(registry)
        if basic:
            headers["Authorization"] = basic
        try:
            response = self.session.get(
                realm, params=params, headers=headers, timeout=self.timeout, allow_redirects=False
            )
        except requests.RequestException as exc:
            raise RegistryError(f"token request to {urlsplit(realm).netloc} failed: {type(exc).__name__}") from None
        if response.status_code != 200:
            raise RegistryError(
                f"token request to {urlsplit(realm).netloc} for {scope} was refused (HTTP {response.status_code})"
            )
        try:
            body = response.json()
        except ValueError:
            raise RegistryError(f"token service {urlsplit(realm).netloc} did not answer JSON") from None
        token = body.get("token") or body.get("access_token") if isinstance(body, dict) else None
        if not isinstance(token, str) or not token:
            raise RegistryError(f"token service {urlsplit(realm).netloc} answered without a token")
        expires = body.get("expires_in") if isinstance(body.get("expires_in"), (int, float)) else 60
        with self._lock:
            self._tokens[key] = (token, time.monotonic() + max(10, float(expires) - 10))
        return token

    def request(
        self,
        method: str,
        registry: str,
        path: str,
        *,
        repository: str,
        actions: str = "pull",
        headers: dict[str, str] | None = None,
        data: bytes | None = None,
        params: dict[str, str] | None = None,
        stream: bool = False,
    ) -> requests.Response:
        """One API call with the auth dance and hand-followed redirects."""
        registry = normalize_registry(registry)
        url = path if path.startswith(("http://", "https://")) else self.base_url(registry) + path
        scope = f"repository:{repository}:{actions}"
        auth: str | None = None
        with self._lock:
            cached = self._tokens.get((registry, scope))
        if cached and cached[1] > time.monotonic():
            auth = f"Bearer {cached[0]}"
        for attempt in range(2):
            response = self._send(method, url, headers or {}, auth, data, params, stream)
            if response.status_code != 401 or attempt == 1:
                return response
            scheme, challenge = parse_challenge(response.headers.get("WWW-Authenticate", ""))
            response.close()
            if scheme == "bearer":
                wanted = challenge.get("scope") or scope
                auth = f"Bearer {self._token(registry, challenge, wanted)}"
            elif scheme == "basic" and self._basic(registry):
                auth = self._basic(registry)
            else:
                break
        return response

    def _send(
        self,
        method: str,
        url: str,
        headers: dict[str, str],
        auth: str | None,
        data: bytes | None,
        params: dict[str, str] | None,
        stream: bool,
    ) -> requests.Response:
        origin = _origin(url)
        for _ in range(MAX_REDIRECTS + 1):
            sent = dict(headers)
            if auth and _origin(url) == origin:
                sent["Authorization"] = auth  # never across a host boundary (distribution-spec, redirects)
            try:
                response = self.session.request(
                    method,
                    url,
                    headers=sent,
                    data=data,
                    params=params,
                    timeout=self.timeout,
                    stream=stream,
                    allow_redirects=False,
                )
            except requests.exceptions.SSLError as exc:
                raise self._tls_failure(url, exc) from None
            except (requests.ConnectionError, requests.Timeout) as exc:
                raise RegistryError(
                    f"cannot reach registry {urlsplit(url).netloc} ({type(exc).__name__} on {method} "
                    f"{urlsplit(url).path})"
                ) from None
            except requests.RequestException as exc:
                raise RegistryError(
                    f"{method} {urlsplit(url).netloc}{urlsplit(url).path} failed: {type(exc).__name__}"
                ) from None
            if response.status_code in (301, 302, 303, 307, 308) and "Location" in response.headers:
                url = urljoin(url, response.headers["Location"])
                params = None  # the Location carries its own query
                if response.status_code == 303:
                    method, data = "GET", None
                response.close()
                continue
            return response
        raise RegistryError(f"too many redirects from {origin[1]}")

    def _tls_failure(self, url: str, exc: requests.exceptions.SSLError) -> RegistryError:
        """Why HTTPS to a registry failed; a registry that answers plain HTTP is told apart by asking it."""
        host = urlsplit(url).netloc
        try:
            self.session.get(f"http://{host}/v2/", timeout=min(self.timeout, 5.0), allow_redirects=False).close()
        except requests.RequestException:
            pass
        else:
            return RegistryError(
                f"registry {host} speaks plain HTTP, not HTTPS: if that is intended (a loopback or test registry), "
                "add it to container.insecure_registries in the server config, or pass --insecure to "
                "flwd :addon publish / flwd :sign"
            )
        reason = str(exc.args[0] if exc.args else exc)
        found = re.search(r"\[SSL: [A-Z_]+\][^(')\]]*", reason)
        return RegistryError(f"HTTPS to registry {host} failed: {found.group(0).strip() if found else 'TLS error'}")

    @staticmethod
    def _fail(response: requests.Response, what: str) -> RegistryError:
        detail = ""
        try:
            errors = response.json().get("errors") or []
            if errors and isinstance(errors[0], dict):
                detail = f": {errors[0].get('code', '')} {errors[0].get('message', '')}".rstrip()
        except (ValueError, AttributeError):
            pass
        return RegistryError(f"{what}: HTTP {response.status_code}{detail}")

    @staticmethod
    def _read_capped(response: requests.Response, limit: int, what: str) -> bytes:
        length = response.headers.get("Content-Length")
        if length and length.isdigit() and int(length) > limit:
            response.close()
            raise TooLarge(f"{what} is {length} bytes, more than the limit of {limit}")
        out = bytearray()
        for chunk in response.iter_content(65536):
            out += chunk
            if len(out) > limit:
                response.close()
                raise TooLarge(f"{what} is larger than the limit of {limit} bytes")
        return bytes(out)

    # -- pulling -------------------------------------------------------------------

    def get_manifest(
        self,
        registry: str,
        repository: str,
        reference: str,
        accept: tuple[str, ...] = MANIFEST_TYPES,
        required: bool = False,
    ) -> Manifest | None:
        """The manifest at a tag or digest, or None if there is none (``required``: ManifestUnknown).

        Pulled by digest, the bytes must hash to it; pulled by tag, the digest
        is computed from the bytes (a ``Docker-Content-Digest`` that disagrees
        is refused rather than believed).
        """
        what = (
            f"manifest {registry}/{repository}:{reference}"
            if not reference.startswith("sha256:")
            else f"manifest {registry}/{repository}@{reference}"
        )
        response = self.request(
            "GET",
            registry,
            f"/v2/{repository}/manifests/{reference}",
            repository=repository,
            headers={"Accept": ", ".join(accept)},
            stream=True,
        )
        if response.status_code == 404:
            answer = registry_answer(response)
            response.close()
            if required:
                raise ManifestUnknown(f"{_missing(registry, repository, reference)} (the registry answered: {answer})")
            return None
        if response.status_code != 200:
            raise self._fail(response, what)
        raw = self._read_capped(response, MAX_MANIFEST_BYTES, what)
        digest = sha256_digest(raw)
        if _DIGEST_RE.fullmatch(reference) and digest != reference:
            raise DigestMismatch(f"{what}: the registry sent bytes that hash to {digest}")
        claimed = response.headers.get("Docker-Content-Digest")
        if claimed and claimed.startswith("sha256:") and claimed != digest:
            raise DigestMismatch(f"{what}: the registry claims {claimed} but sent bytes that hash to {digest}")
        try:
            data = json.loads(raw)
        except ValueError:
            raise RegistryError(f"{what} is not JSON") from None
        if not isinstance(data, dict):
            raise RegistryError(f"{what} is not a JSON object")
        media_type = data.get("mediaType") or response.headers.get("Content-Type", "").split(";")[0].strip()
        return Manifest(digest, media_type, raw, data)

    def require_manifest(self, ref: ImageRef) -> Manifest:
        """The manifest ``ref`` names; ManifestUnknown (with the registry's answer) when there is none."""
        manifest = self.get_manifest(ref.registry, ref.repository, ref.digest or ref.tag or "latest", required=True)
        assert manifest is not None
        return manifest

    def has_manifest(self, registry: str, repository: str, reference: str) -> str | None:
        """None when the registry holds ``reference``, else its answer (``manifest unknown``); no body is read."""
        response = self.request(
            "HEAD",
            registry,
            f"/v2/{repository}/manifests/{reference}",
            repository=repository,
            headers={"Accept": ", ".join(MANIFEST_TYPES)},
        )
        response.close()
        if response.status_code == 200:
            return None
        if response.status_code == 404:
            return "manifest unknown"  # a HEAD answer has no body to quote
        raise RegistryError(f"manifest {registry}/{repository}@{reference}: HTTP {response.status_code}")

    def get_blob(self, registry: str, repository: str, digest: str, max_bytes: int) -> bytes:
        """A blob's bytes, refused if they do not hash to ``digest`` or exceed ``max_bytes``."""
        if not _DIGEST_RE.fullmatch(digest or ""):
            raise RegistryError(f"blob digest {digest!r} is not a sha256 digest")
        what = f"blob {registry}/{repository}@{digest}"
        response = self.request("GET", registry, f"/v2/{repository}/blobs/{digest}", repository=repository, stream=True)
        if response.status_code != 200:
            raise self._fail(response, what)
        data = self._read_capped(response, max_bytes, what)
        got = sha256_digest(data)
        if got != digest:
            raise DigestMismatch(f"{what}: the registry sent bytes that hash to {got}")
        return data

    def referrers(self, registry: str, repository: str, digest: str) -> list[dict[str, Any]]:
        """Manifests that name ``digest`` as their subject (OCI 1.1), via the API or the tag schema."""
        response = self.request(
            "GET",
            registry,
            f"/v2/{repository}/referrers/{digest}",
            repository=repository,
            headers={"Accept": OCI_INDEX},
            stream=True,
        )
        if response.status_code == 200:
            try:
                data = json.loads(self._read_capped(response, MAX_MANIFEST_BYTES, "referrers list"))
            except ValueError:
                return []
            return [m for m in data.get("manifests") or [] if isinstance(m, dict)]
        response.close()
        # No referrers API (distribution 2.x answers 404): the fallback tag schema, sha256-<hex>.
        index = self.get_manifest(registry, repository, digest.replace(":", "-"), accept=(OCI_INDEX,))
        if index is None:
            return []
        return [m for m in index.data.get("manifests") or [] if isinstance(m, dict)]

    # -- pushing -------------------------------------------------------------------

    def push_blob(self, registry: str, repository: str, data: bytes) -> str:
        """Upload a blob (monolithic: POST then PUT); returns its digest.  Skips blobs already there."""
        digest = sha256_digest(data)
        head = self.request(
            "HEAD", registry, f"/v2/{repository}/blobs/{digest}", repository=repository, actions="pull,push"
        )
        if head.status_code == 200:
            return digest
        start = self.request(
            "POST", registry, f"/v2/{repository}/blobs/uploads/", repository=repository, actions="pull,push"
        )
        if start.status_code != 202 or "Location" not in start.headers:
            raise self._fail(start, f"starting an upload to {registry}/{repository}")
        location = urljoin(self.base_url(registry) + "/", start.headers["Location"])
        joiner = "&" if "?" in location else "?"
        done = self.request(
            "PUT",
            registry,
            f"{location}{joiner}digest={digest}",
            repository=repository,
            actions="pull,push",
            headers={"Content-Type": "application/octet-stream"},
            data=data,
        )
        if done.status_code != 201:
            raise self._fail(done, f"uploading {digest} to {registry}/{repository}")
        return digest

    def put_manifest(self, registry: str, repository: str, reference: str, raw: bytes, media_type: str) -> str:
        """Store a manifest at a tag (or its digest); returns the digest of ``raw``."""
        response = self.request(
            "PUT",
            registry,
            f"/v2/{repository}/manifests/{reference}",
            repository=repository,
            actions="pull,push",
            headers={"Content-Type": media_type},
            data=raw,
        )
        if response.status_code not in (200, 201):
            raise self._fail(response, f"storing the manifest {registry}/{repository}:{reference}")
        return sha256_digest(raw)


def _missing(registry: str, repository: str, reference: str) -> str:
    if _DIGEST_RE.fullmatch(reference):
        return f"no such image {registry}/{repository}@{reference}"
    return f"no such tag {reference!r} in {registry}/{repository}"
