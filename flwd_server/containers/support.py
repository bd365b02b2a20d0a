"""Container steps, image signatures and OCI add-ons, built on first use.

The docker SDK, the registry client and cryptography cost tens of megabytes
and a noticeable start-up time; a server or CLI that never runs a container
step or reads an add-on never loads them.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import Any

from ..config import Settings
from .sockets import may_have_engine


class ContainerSupport:
    def __init__(self, settings: Settings, digest_key: Callable[[], bytes], owner: Callable[[], str]) -> None:
        self.settings = settings
        self._digest_key = digest_key
        self._owner = owner
        self._lock = threading.Lock()
        self._parts: dict[str, Any] | None = None

    def _get(self, name: str) -> Any:
        parts = self._parts
        if parts is None:
            with self._lock:
                if self._parts is None:
                    self._parts = self._build()
                parts = self._parts
        return parts[name]

    def _build(self) -> dict[str, Any]:
        from ..runs.container_executor import ContainerExecutor, instance_label
        from .registry_client import RegistryClient
        from .runtime import ContainerRuntime
        from .signatures import SignatureVerifier

        box = self.settings.container
        registry = RegistryClient(box.insecure_registries, timeout=box.registry_timeout)
        runtime = ContainerRuntime(box, api_timeout=box.api_timeout)
        return {
            "registry": registry,
            "verifier": SignatureVerifier(registry, box.signature_keys, box.allowed_registries),
            "runtime": runtime,
            "executor": ContainerExecutor(runtime, registry, lambda: instance_label(self._digest_key()), self._owner),
        }

    @property
    def registry(self) -> Any:
        return self._get("registry")

    @property
    def verifier(self) -> Any:
        return self._get("verifier")

    def status(self) -> tuple[str | None, str | None]:
        """``(engine, None)`` when a container engine answers, else ``(None, reason)``."""
        return self._get("runtime").status()

    def verify_image(self, image: str) -> Any:
        return self.verifier.verify_image(image)

    def run_step(self, **kwargs: Any) -> Any:
        return self._get("executor")(**kwargs)

    def sweep_orphans(self, store: Any, owner: str) -> None:
        """Remove containers a crashed worker left behind, if an engine may be there at all."""
        if may_have_engine(self.settings.container, os.environ):
            self._get("executor").sweep_orphans(store, owner)

    def close(self) -> None:
        if self._parts is not None:
            self._parts["runtime"].close()
            self._parts["registry"].close()
