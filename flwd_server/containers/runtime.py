"""Finding the container engine: a Docker socket or podman's Docker-compatible one.

``container.runtime`` picks where to look:

* ``auto``: ``container.socket`` if set, then ``DOCKER_HOST``, then Docker's
  ``/var/run/docker.sock``, podman's rootful ``/run/podman/podman.sock`` and
  rootless ``$XDG_RUNTIME_DIR/podman/podman.sock``; the first that answers wins.
* ``docker`` / ``podman``: the same, limited to that engine's places, and the
  engine that answers must be the one asked for.
* ``none``: container steps cannot run (plans say so, runs are rejected).

A candidate counts when ``ping`` and ``version`` answer; ``version`` names the
engine (podman reports a ``Podman Engine`` component).  A found engine is
re-checked every ``RECHECK_OK`` seconds, a missing one every ``RECHECK_MISSING``
seconds, and at once after a caller reports a failure (``invalidate``).
Plain ``tcp://`` endpoints are refused: the socket is root-equivalent, so it
is used only over a unix socket or TLS (``DOCKER_TLS_VERIFY=1`` with
``DOCKER_CERT_PATH``).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Mapping
from typing import Any

import docker
import docker.errors
import docker.tls
import requests
from docker.constants import DEFAULT_DOCKER_API_VERSION

from ..config import ContainerSettings
from ..errors import Unavailable
from .sockets import DOCKER_SOCKET, PODMAN_ROOTFUL_SOCKET, PROBE_TIMEOUT, Candidate, candidates, unix_socket_problem

__all__ = [
    "DOCKER_SOCKET",
    "PODMAN_ROOTFUL_SOCKET",
    "Candidate",
    "ContainerRuntime",
    "candidates",
    "unix_socket_problem",
]

log = logging.getLogger("flwd.containers")

MIN_API_VERSION = "1.24"
MAX_POOL = 128
RECHECK_OK = 30.0
RECHECK_MISSING = 5.0


def tls_config(url: str, environ: Mapping[str, str]) -> docker.tls.TLSConfig | None:
    """TLS settings for a ``tcp://`` engine; raises Unavailable when there are none (never plain TCP)."""
    if not url.startswith(("tcp://", "https://", "http://")):
        return None
    cert_path = environ.get("DOCKER_CERT_PATH")
    if url.startswith("http://") or environ.get("DOCKER_TLS_VERIFY", "") in ("", "0") or not cert_path:
        raise Unavailable(
            f"{url} is a TCP endpoint without TLS; the engine's API is root-equivalent, so flwd uses it only over a unix "
            "socket or with DOCKER_TLS_VERIFY=1 and DOCKER_CERT_PATH (ca.pem, cert.pem, key.pem)"
        )
    try:
        return docker.tls.TLSConfig(
            client_cert=(os.path.join(cert_path, "cert.pem"), os.path.join(cert_path, "key.pem")),
            ca_cert=os.path.join(cert_path, "ca.pem"),
            verify=True,
        )
    except docker.errors.TLSParameterError:
        raise Unavailable(f"DOCKER_CERT_PATH {cert_path} must hold ca.pem, cert.pem and key.pem for {url}") from None


def engine_name(version: dict[str, Any]) -> str:
    components = version.get("Components") or []
    names = " ".join(str(c.get("Name", "")) for c in components if isinstance(c, dict))
    return (
        "podman"
        if "podman" in names.lower() or "podman" in str(version.get("Platform", {}).get("Name", "")).lower()
        else "docker"
    )


def probe(url: str, tls: docker.tls.TLSConfig | None) -> dict[str, Any]:
    """``_ping`` then ``version``, unversioned (an engine refuses API versions below its minimum)."""
    api = docker.APIClient(base_url=url, version=MIN_API_VERSION, timeout=PROBE_TIMEOUT, tls=tls or False)
    try:
        api._raise_for_status(api._get(api._url("/_ping", versioned_api=False)))
        return api.version(api_version=False)
    finally:
        api.close()


def api_version(version: dict[str, Any]) -> str:
    """The engine's API version, capped at the newest this docker SDK speaks."""

    def key(text: str) -> tuple[int, ...]:
        return tuple(int(p) for p in text.split(".") if p.isdigit())

    theirs = str(version.get("ApiVersion") or MIN_API_VERSION)
    return theirs if key(theirs) <= key(DEFAULT_DOCKER_API_VERSION) else DEFAULT_DOCKER_API_VERSION


class ContainerRuntime:
    """The engine this process uses: found lazily, re-checked, one client per process."""

    def __init__(
        self, settings: ContainerSettings, environ: Mapping[str, str] | None = None, api_timeout: float = 60.0
    ) -> None:
        self.settings = settings
        self.environ = os.environ if environ is None else environ
        self.api_timeout = api_timeout
        self._lock = threading.Lock()
        self._client: docker.DockerClient | None = None
        self._pid: int | None = None
        self._engine: str | None = None
        self._url: str | None = None
        self._problem: str | None = None
        self._checked_at = 0.0

    # -- discovery -------------------------------------------------------------

    def status(self) -> tuple[str | None, str | None]:
        """``(engine, None)`` when an engine answers, else ``(None, reason)``."""
        with self._lock:
            self._probe_if_due()
            if self._engine:
                return self._engine, None
            return None, self._problem

    def client(self) -> docker.DockerClient:
        """A client for the engine found; raises Unavailable with the reason when there is none."""
        with self._lock:
            self._probe_if_due()
            if self._client is None:
                raise Unavailable(self._problem or "no container runtime is available")
            return self._client

    def invalidate(self) -> None:
        """A call failed: look again before the next use."""
        with self._lock:
            self._checked_at = 0.0

    def close(self) -> None:
        with self._lock:
            self._drop_client()

    def _drop_client(self) -> None:
        if self._client is not None and self._pid == os.getpid():
            try:
                self._client.close()
            except Exception:  # closing a dead connection pool must not fail shutdown
                pass
        self._client = None

    def _probe_if_due(self) -> None:
        now = time.monotonic()
        if self._pid != os.getpid():  # forked: the parent's connections are not ours
            self._client, self._engine, self._checked_at = None, None, 0.0
            self._pid = os.getpid()
        due = RECHECK_OK if self._engine else RECHECK_MISSING
        if self._checked_at and now - self._checked_at < due:
            return
        self._checked_at = now
        if self._client is not None:
            try:
                if self._url and self._url.startswith("unix://") and unix_socket_problem(self._url[len("unix://") :]):
                    raise docker.errors.DockerException("the socket is gone")
                self._client.ping()
                return
            except (docker.errors.DockerException, requests.RequestException):
                log.warning("container engine at %s stopped answering; looking again", self._url)
                self._drop_client()
                self._engine = None
        self._discover()

    def _discover(self) -> None:
        if self.settings.runtime == "none":
            self._problem = "container.runtime is none: container steps cannot run"
            return
        tried = []
        for candidate in candidates(self.settings, self.environ):
            found, problem = self._try(candidate)
            if found:
                return
            tried.append(f"{candidate.url} ({candidate.origin}): {problem}")
        wanted = "" if self.settings.runtime == "auto" else f" {self.settings.runtime}"
        problem = (
            f"no{wanted} container runtime is available; tried "
            + "; ".join(tried)
            + ". Start one (e.g. `podman system service --time=0 unix:///run/podman/podman.sock`) or set container.socket"
        )
        if problem != self._problem:  # said once, not at every re-check
            log.warning("%s", problem, extra={"event": "container.runtime_missing"})
        self._problem = problem

    def _try(self, candidate: Candidate) -> tuple[bool, str]:
        url = candidate.url
        if url.startswith("unix://"):
            problem = unix_socket_problem(url[len("unix://") :])
            if problem:
                return False, problem
        try:
            tls = tls_config(url, self.environ)
        except Unavailable as exc:
            return False, exc.detail
        try:
            version = probe(url, tls)
        except (docker.errors.DockerException, requests.RequestException) as exc:
            return False, f"does not answer ({type(exc).__name__})"
        engine = engine_name(version)
        if candidate.engine and engine != candidate.engine:
            return False, f"answers as {engine}, but container.runtime is {candidate.engine}"
        # Each running step holds two connections (attach, wait): size the pool for many.
        client = docker.DockerClient(
            base_url=url,
            version=api_version(version),
            timeout=self.api_timeout,
            tls=tls or False,
            max_pool_size=MAX_POOL,
        )
        self._client, self._engine, self._url, self._problem = client, engine, url, None
        log.info(
            "container steps run on %s at %s",
            engine,
            url,
            extra={"event": "container.runtime", "engine": engine, "socket": url},
        )
        return True, ""
