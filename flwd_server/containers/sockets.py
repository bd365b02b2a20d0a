"""Where a container engine's API may be listening: no docker SDK needed to ask.

Kept apart from :mod:`flwd_server.containers.runtime` so that a server or CLI that
never runs a container step can check for an engine without importing the
docker SDK (and what it pulls in).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass

from ..config import ContainerSettings

DOCKER_SOCKET = "unix:///var/run/docker.sock"
PODMAN_ROOTFUL_SOCKET = "unix:///run/podman/podman.sock"
PROBE_TIMEOUT = 5.0


@dataclass(frozen=True)
class Candidate:
    url: str
    engine: str | None  # the engine expected there (None: whichever answers)
    origin: str  # where the candidate came from, for messages


def candidates(settings: ContainerSettings, environ: Mapping[str, str]) -> list[Candidate]:
    """Where to look, in order, for ``settings.runtime``."""
    wanted = settings.runtime
    if wanted == "none":
        return []
    out: list[Candidate] = []
    if settings.socket:
        out.append(Candidate(settings.socket, None if wanted == "auto" else wanted, "container.socket"))
        return out
    if environ.get("DOCKER_HOST") and wanted in ("auto", "docker", "podman"):
        out.append(Candidate(environ["DOCKER_HOST"], None if wanted == "auto" else wanted, "DOCKER_HOST"))
    if wanted in ("auto", "docker"):
        out.append(Candidate(DOCKER_SOCKET, "docker", "Docker's default socket"))
    if wanted in ("auto", "podman"):
        out.append(Candidate(PODMAN_ROOTFUL_SOCKET, "podman", "podman's rootful socket"))
        runtime_dir = environ.get("XDG_RUNTIME_DIR")
        if runtime_dir:
            out.append(
                Candidate(f"unix://{runtime_dir.rstrip('/')}/podman/podman.sock", "podman", "podman's rootless socket")
            )
    return out


def unix_socket_problem(path: str) -> str | None:
    """Why nothing answers at a unix socket path (checked by hand: the docker SDK leaks the
    socket of a refused connection)."""
    if not os.path.exists(path):
        return "no such socket"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(PROBE_TIMEOUT)
    try:
        sock.connect(path)
    except OSError as exc:
        return f"does not answer ({type(exc).__name__})"
    finally:
        sock.close()
    return None


def may_have_engine(settings: ContainerSettings, environ: Mapping[str, str]) -> bool:
    """Cheap pre-check: a configured or remote endpoint, or a default socket file that exists."""
    return any(
        not c.url.startswith("unix://") or os.path.exists(c.url[len("unix://") :])
        for c in candidates(settings, environ)
    )
