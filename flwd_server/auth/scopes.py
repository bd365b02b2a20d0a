"""The scopes a token can hold, declared once.

Routes declare theirs with these members (:mod:`flwd_server.web.operations`),
the OpenAPI document and the dev principal list them, the CLI checks
``--scope`` against them: adding a scope is one line here.
"""

from __future__ import annotations

from enum import StrEnum


class Scope(StrEnum):
    JOBS_READ = "jobs:read"
    RUNS_READ = "runs:read"
    RUNS_WRITE = "runs:write"
    RUNS_DOWNGRADE = "runs:downgrade"  # no route's: lets a run ask for a less strict profile (the planner)
    SOURCES_READ = "sources:read"
    SOURCES_WRITE = "sources:write"
    METRICS_READ = "metrics:read"
    EXPORT_READ = "export:read"


SCOPES: tuple[str, ...] = tuple(scope.value for scope in Scope)  # plain strings, in declaration order
