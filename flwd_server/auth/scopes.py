"""The scopes a token can hold, declared once.

Routes declare theirs with these members (:mod:`flwd_server.web.operations`),
the OpenAPI document and the dev principal list them, the CLI checks
``--scope`` against them: adding a scope is one line here.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum


class Scope(StrEnum):
    JOBS_READ = "jobs:read"
    RUNS_READ = "runs:read"
    RUNS_WRITE = "runs:write"
    RUNS_APPROVE = "runs:approve"  # approve or deny runs awaiting approval (not one's own)
    RUNS_DOWNGRADE = "runs:downgrade"  # no route's: lets a run ask for a less strict profile (the planner)
    SOURCES_READ = "sources:read"
    SOURCES_WRITE = "sources:write"
    METRICS_READ = "metrics:read"
    EXPORT_READ = "export:read"


SCOPES: tuple[str, ...] = tuple(scope.value for scope in Scope)  # plain strings, in declaration order

# The scopes that may be narrowed to jobs: ``runs:write:SOURCE:JOB``, ``runs:read:SOURCE:JOB``, ``runs:approve:SOURCE:JOB``.
NARROWABLE: tuple[str, ...] = (Scope.RUNS_READ.value, Scope.RUNS_WRITE.value, Scope.RUNS_APPROVE.value)
# SOURCE and JOB patterns: the name characters (flwd_server/jobs/files.py JOB_NAME_RE) plus ``*``.
PATTERN_RE = re.compile(r"[a-z0-9_.*-]{1,128}")


@dataclass(frozen=True)
class Grant:
    """One ``SOURCE:JOB`` pair of a narrowed scope; ``*`` matches any run of characters within its part."""

    source: str
    job: str

    def matches(self, source: str, job: str) -> bool:
        return _glob(self.source).fullmatch(source) is not None and _glob(self.job).fullmatch(job) is not None

    def like(self) -> tuple[str, str]:
        """The two parts as SQL ``LIKE`` patterns, escape character ``!`` (``LIKE ? ESCAPE '!'``)."""
        return _like(self.source), _like(self.job)

    def exact(self) -> bool:
        return "*" not in self.source and "*" not in self.job


@functools.lru_cache(maxsize=1024)
def _glob(pattern: str) -> re.Pattern[str]:
    return re.compile(".*".join(re.escape(part) for part in pattern.split("*")))


def _like(pattern: str) -> str:
    return pattern.replace("!", "!!").replace("%", "!%").replace("_", "!_").replace("*", "%")


def parse_scope(scope: str) -> tuple[str, Grant | None] | None:
    """``(base, grant)`` of a known scope (``grant`` None when not narrowed), or None for an unknown or bad one."""
    if scope in SCOPES:
        return scope, None
    parts = scope.split(":")
    if len(parts) != 4:
        return None
    base = f"{parts[0]}:{parts[1]}"
    if base not in NARROWABLE or not all(PATTERN_RE.fullmatch(p) for p in parts[2:]):
        return None
    return base, Grant(parts[2], parts[3])


def is_valid_scope(scope: str) -> bool:
    return parse_scope(scope) is not None


def grants_of(scopes: Iterable[str], base: str) -> frozenset[Grant] | None:
    """The jobs ``scopes`` grant ``base`` for: None for every job (plain ``base``), else the grants (maybe none)."""
    grants: set[Grant] = set()
    for scope in scopes:
        parsed = parse_scope(scope)
        if parsed is None or parsed[0] != base:
            continue
        if parsed[1] is None:
            return None
        grants.add(parsed[1])
    return frozenset(grants)


def grants_sql(grants: frozenset[Grant], source: str = "source", job: str = "job") -> tuple[str, list[str]]:
    """An SQL condition (both dialects) on the ``source`` and ``job`` columns selecting the granted jobs."""
    if not grants:
        return "1 = 0", []
    ordered = sorted(grants, key=lambda g: (g.source, g.job))
    condition = " OR ".join(f"({source} LIKE ? ESCAPE '!' AND {job} LIKE ? ESCAPE '!')" for _ in ordered)
    return f"({condition})", [part for grant in ordered for part in grant.like()]


def ticket_scopes(scopes: Iterable[str]) -> frozenset[str]:
    """The scopes a stream ticket carries: the asker's ``runs:read`` (plain or narrowed) and ``sources:read``."""
    return frozenset(
        s for s in scopes if (parsed := parse_scope(s)) and parsed[0] in (Scope.RUNS_READ, Scope.SOURCES_READ)
    )
