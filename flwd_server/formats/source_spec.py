"""The shape of a source object (``sources:`` in the settings, ``POST /sources``), checked one way.

Here rather than in ``config.py`` so the settings module stays within the size rule;
``config`` re-exports both names for the modules that read them from there.
"""

from __future__ import annotations

import re
from typing import Any

from ..errors import ConfigError

SOURCE_KEYS = {
    "local": {"required": ("name", "path"), "optional": ()},
    "git": {"required": ("name", "url"), "optional": ("ref",)},
    "oci": {"required": ("name", "ref"), "optional": ()},
}
_NAME_RE = re.compile(r"[a-z0-9][a-z0-9_.-]{0,62}")


def validate_source_spec(spec: Any, key: str = "source") -> dict[str, Any]:
    """Check the shape of one source object; the source kinds check the values."""
    if not isinstance(spec, dict):
        raise ConfigError(key, "expected a mapping with type and name")
    kind = spec.get("type")
    if not isinstance(kind, str) or kind not in SOURCE_KEYS:
        raise ConfigError(f"{key}.type", f"expected one of {', '.join(SOURCE_KEYS)}, got {kind!r}")
    allowed = {"type", *SOURCE_KEYS[kind]["required"], *SOURCE_KEYS[kind]["optional"]}
    for name in spec:
        if name not in allowed:
            raise ConfigError(
                f"{key}.{name}", f"unknown key for a {kind} source (allowed: {', '.join(sorted(allowed))})"
            )
    for name in SOURCE_KEYS[kind]["required"]:
        if name not in spec:
            raise ConfigError(f"{key}.{name}", "is required")
    for name, value in spec.items():
        if not isinstance(value, str) or not value:
            raise ConfigError(f"{key}.{name}", "expected a non-empty string")
    if not _NAME_RE.fullmatch(spec["name"]):
        raise ConfigError(
            f"{key}.name",
            "expected lowercase letters, digits, '.', '_' or '-' (at most 63), starting with a letter or digit",
        )
    return dict(spec)
