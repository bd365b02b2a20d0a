"""A source that is an OCI add-on artifact: ``{"type": "oci", "name": …, "ref": "registry/repo:tag"}``.

The artifact (format: :mod:`flwd_server.containers.addons`) is pulled over the OCI
distribution API from a registry in ``container.allowed_registries``.  Its
manifest digest is the source's *revision*: every job, plan and run records
it.  The signature is checked per ``container.verify_signatures`` before
anything is unpacked (``enforce`` refuses an add-on that is not signed by a
configured key; ``permissive`` loads it and says so in the source's errors).
Each digest is unpacked once under ``DATA_DIR/addons/NAME/`` and reused.

Pulling happens on ``sync`` (and on the first ``snapshot`` in a process); a
later ``snapshot`` never touches the network, unless the database says the
source is now at another digest (another node synced it): then this process
pulls that exact digest, so every node serves the same revision.  A run
whose revision this node has never unpacked pulls it by digest too
(``checkout_for``).  A source whose registry cannot
be reached has no jobs and an error saying why, and is retried on use after
``RETRY_AFTER`` seconds; the other sources are not affected.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from pathlib import Path
from typing import Any

from ..containers.addons import MAX_LAYER_BYTES, addon_layer, extract
from ..containers.images import parse_image_ref, registry_allowed
from ..containers.registry_client import RegistryClient
from ..errors import FlwdError, SourceError, UnsafeSource
from .base import Source, SourceSnapshot, scan_jobs

log = logging.getLogger("flwd.sources.oci")
RETRY_AFTER = 10.0
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")


class AddonRefused(SourceError):
    """Raised when a sync finds an artifact flwd will not load (unsigned, not an add-on, unsafe entries).

    A 502 like every failed sync: the request was fine, what the registry holds is not.
    """

    slug = "addon-refused"
    title = "Add-on refused"


class OciSource(Source):
    kind = "oci"

    def __init__(
        self,
        name: str,
        spec: dict[str, Any],
        *,
        registry: RegistryClient,
        verifier: Any,
        allowed_registries: tuple[str, ...],
        verify_signatures: str,
        root: Path,
        default_timeout: float = 3600,
    ) -> None:
        super().__init__(name, spec)
        self.ref = parse_image_ref(spec["ref"], field="ref")
        if not registry_allowed(self.ref, allowed_registries):
            listed = ", ".join(allowed_registries) or "none configured"
            problem = f"registry {self.ref.registry} is not in container.allowed_registries ({listed})"
            raise UnsafeSource(f"source {name!r}: {problem}", errors=[{"field": "ref", "message": problem}])
        self.registry = registry
        self.verifier = verifier
        self.verify_signatures = verify_signatures
        self.root = Path(root) / name
        self.default_timeout = default_timeout
        self._lock = threading.Lock()
        self._current: SourceSnapshot | None = None
        self._failed: SourceSnapshot | None = None
        self._retry_at = 0.0
        self._wanted: str | None = None  # the digest in the database (the last sync, on any node)

    def load_state(self, state: dict[str, Any]) -> None:
        wanted = state.get("revision")
        self._wanted = wanted if isinstance(wanted, str) and _DIGEST.fullmatch(wanted) else None

    def snapshot(self) -> SourceSnapshot:
        current, wanted = self._current, self._wanted
        if current is not None and (wanted is None or current.revision == wanted):
            return current
        if self._failed is not None and time.monotonic() < self._retry_at:
            return self._failed
        try:
            return self.sync_to(wanted) if wanted is not None else self.sync()
        except FlwdError as exc:
            return self._failed_snapshot(exc.detail)

    def sync_to(self, digest: str) -> SourceSnapshot:
        """Serve exactly ``digest`` (pulled by digest: the registry's bytes must hash to it)."""
        with self._lock:
            try:
                if self._current is not None and self._current.revision == digest:
                    return self._current
                return self._serve(self.registry.require_manifest(self.ref.with_digest(digest)))
            except FlwdError as exc:
                log.warning(
                    "add-on source %s at %s failed: %s",
                    self.name,
                    digest,
                    exc.detail,
                    extra={"event": "source.failed", "source": self.name},
                )
                raise

    def sync(self) -> SourceSnapshot:
        """Fetch the manifest; unpack a new digest; raise what went wrong (the last good jobs stay)."""
        with self._lock:
            try:
                return self._sync()
            except FlwdError as exc:
                log.warning(
                    "add-on source %s (%s) failed: %s",
                    self.name,
                    self.ref,
                    exc.detail,
                    extra={"event": "source.failed", "source": self.name},
                )
                if self._current is None:
                    self._failed_snapshot(exc.detail)
                raise

    def _sync(self) -> SourceSnapshot:
        try:
            return self._serve(self.registry.require_manifest(self.ref))
        except UnsafeSource as exc:
            raise AddonRefused(exc.detail) from None

    def _unpack(self, manifest: Any) -> tuple[Path, list[dict[str, Any]]]:
        """Check the signature of ``manifest``'s digest and unpack its jobs layer (once per digest)."""
        digest = manifest.digest
        where = f"{self.ref.registry}/{self.ref.repository}@{digest}"
        layer = addon_layer(manifest, where)
        notes = self._check_signature(digest, where)
        target = self.root / digest.split(":", 1)[1]
        if not (target / "jobs").is_dir():
            size = layer.get("size")
            if isinstance(size, int) and size > MAX_LAYER_BYTES:
                raise UnsafeSource(f"{where}: its jobs layer is {size} bytes, more than {MAX_LAYER_BYTES}")
            blob = self.registry.get_blob(
                self.ref.registry, self.ref.repository, str(layer.get("digest")), MAX_LAYER_BYTES
            )
            extract(blob, target)
        return target, notes

    def _serve(self, manifest: Any) -> SourceSnapshot:
        digest = manifest.digest
        if self._current is not None and self._current.revision == digest:
            return self._current
        where = f"{self.ref.registry}/{self.ref.repository}@{digest}"
        target, notes = self._unpack(manifest)
        snap = scan_jobs(self.name, target, digest, self.default_timeout)
        if notes:
            snap = SourceSnapshot(snap.name, snap.revision, snap.root, snap.jobs, tuple(notes) + snap.errors)
        self._current, self._failed = snap, None
        log.info(
            "add-on source %s at %s: %d jobs",
            self.name,
            where,
            len(snap.jobs),
            extra={"event": "source.synced", "source": self.name, "revision": digest},
        )
        return snap

    def _check_signature(self, digest: str, where: str) -> list[dict[str, Any]]:
        if self.verify_signatures == "disabled":
            return []
        result = self.verifier.verify_digest(self.ref, digest)
        if result.status == "verified":
            return []
        if self.verify_signatures == "enforce":
            raise UnsafeSource(f"add-on {where} refused: {result.reason} (container.verify_signatures: enforce)")
        return [
            {
                "path": "",
                "field": "(signature)",
                "message": f"{result.reason} (container.verify_signatures: permissive)",
            }
        ]

    def _failed_snapshot(self, message: str) -> SourceSnapshot:
        self._failed = SourceSnapshot(
            self.name, None, None, {}, ({"path": "", "field": "(source)", "message": message},)
        )
        self._retry_at = time.monotonic() + RETRY_AFTER
        return self._failed

    def checkout_for(self, revision: str | None) -> str | None:
        """The unpacked files of ``revision``; a digest this node never unpacked is pulled by digest."""
        current = self._current
        if current is not None and (revision is None or revision == current.revision):
            return current.root
        if revision is None or not _DIGEST.fullmatch(revision):
            return None
        target = self.root / revision.split(":", 1)[1]
        if (target / "jobs").is_dir():  # unpacked here before, after its signature was checked
            return str(target)
        try:
            with self._lock:
                target, _ = self._unpack(self.registry.require_manifest(self.ref.with_digest(revision)))
        except FlwdError as exc:
            log.warning("add-on source %s: cannot get %s: %s", self.name, revision, exc.detail)
            return None
        return str(target)
