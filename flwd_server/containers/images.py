"""Image and artifact references, normalised so that registry checks compare hosts exactly."""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..errors import Unprocessable

DOCKER_HUB = "docker.io"
_HUB_ALIASES = {"docker.io", "index.docker.io", "registry-1.docker.io", "registry.hub.docker.com"}
_DIGEST_RE = re.compile(r"sha256:[a-f0-9]{64}")
_TAG_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
_PATH_RE = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*")
_HOST_RE = re.compile(r"(?:[a-zA-Z0-9-]+(?:\.[a-zA-Z0-9-]+)*|\[[0-9a-fA-F:]+\])(?::[0-9]{1,5})?")


@dataclass(frozen=True)
class ImageRef:
    registry: str
    repository: str
    tag: str | None = None
    digest: str | None = None

    @property
    def pinned(self) -> bool:
        return self.digest is not None

    def __str__(self) -> str:
        out = f"{self.registry}/{self.repository}"
        if self.tag:
            out += f":{self.tag}"
        if self.digest:
            out += f"@{self.digest}"
        return out

    def with_digest(self, digest: str) -> ImageRef:
        return ImageRef(self.registry, self.repository, None, digest)


def normalize_registry(host: str) -> str:
    host = host.lower()
    if host.endswith(":443"):
        host = host[:-4]
    return DOCKER_HUB if host in _HUB_ALIASES else host


def parse_image_ref(text: str, field: str = "image") -> ImageRef:
    """Parse ``[registry/]repo[:tag][@sha256:…]`` the way docker does.

    The first path component is a registry only if it has a '.' or ':' or is
    ``localhost``; otherwise the image is on Docker Hub (``library/`` added).
    """
    if not isinstance(text, str) or not text or len(text) > 512 or any(c.isspace() for c in text):
        raise Unprocessable(f"{field}: not an image reference", [{"field": field, "message": "not an image reference"}])
    rest, digest = text, None
    if "@" in rest:
        rest, digest = rest.split("@", 1)
        if not _DIGEST_RE.fullmatch(digest):
            raise Unprocessable(
                f"{field}: bad digest {digest!r}", [{"field": field, "message": "digest must be sha256:<64 hex>"}]
            )
    first, slash, remainder = rest.partition("/")
    if slash and ("." in first or ":" in first or first == "localhost"):
        if not _HOST_RE.fullmatch(first):
            raise Unprocessable(
                f"{field}: bad registry host {first!r}", [{"field": field, "message": "bad registry host"}]
            )
        registry, path = normalize_registry(first), remainder
    else:
        registry, path = DOCKER_HUB, rest
    tag = None
    if ":" in path.rsplit("/", 1)[-1]:
        path, tag = path.rsplit(":", 1)
        if not _TAG_RE.fullmatch(tag):
            raise Unprocessable(f"{field}: bad tag {tag!r}", [{"field": field, "message": "bad tag"}])
    if registry == DOCKER_HUB and "/" not in path:
        path = f"library/{path}"
    if not _PATH_RE.fullmatch(path):
        raise Unprocessable(f"{field}: bad repository {path!r}", [{"field": field, "message": "bad repository name"}])
    if tag is None and digest is None:
        tag = "latest"
    return ImageRef(registry, path, tag, digest)


def registry_allowed(ref: ImageRef, allowed: tuple[str, ...] | list[str]) -> bool:
    return ref.registry in {normalize_registry(a) for a in allowed}
