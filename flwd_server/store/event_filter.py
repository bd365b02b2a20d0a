"""Which events a stream wants: ``type``, ``run``, ``job`` and ``source``, as SQL and as a test of one event.

``GET /events?type=run.*,step.finished&job=build`` follows only the events that
pass every given parameter (AND); the values of one parameter are
alternatives (OR).  A type is an exact one (``run.finished``) or a prefix
(``run.*``), expanded here into the exact types it covers, so both the SQL
(``type IN (...)``) and the live path (a set lookup) compare whole types.

An event's job and source are those of its run.  An event without a run
(``source.synced``, ``source.failed``, a refused ``policy.profile_downgrade``)
has no run and no job, so a ``run`` or ``job`` filter never matches it; its
source is the ``source`` its data names, so a ``source`` filter does.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from ..auth.scopes import Grant, grants_sql
from ..errors import BadRequest
from ..models import Event, EventType
from .queries import RUN_ID_RE

PARAMETERS = ("type", "run", "job", "source")
MAX_VALUES = 100  # per parameter: bounds the SQL IN lists and the broadcaster's index
TYPES = tuple(t.value for t in EventType)
# One value of each parameter; the OpenAPI document declares the comma-separated lists of them (list_pattern).
SYNTAX = {
    "type": re.compile(r"[a-z][a-z_]*(?:\.[a-z][a-z_]*)*(?:\.\*)?"),
    "run": RUN_ID_RE,
    "job": re.compile(r"[a-z0-9][a-z0-9_.-]{0,127}"),  # job and source names (jobs/files.py, config.py) fit this
    "source": re.compile(r"[a-z0-9][a-z0-9_.-]{0,127}"),
}
GRANTED_KEY = ("granted", "")  # the index key of a narrowed token's stream with globs: every event is tested
# The source an event without a run names in its data, per SQL dialect.
DATA_SOURCE_SQL = {"sqlite": "json_extract(e.data, '$.source')", "postgres": "(e.data::json ->> 'source')"}

NARROWED_RUNLESS = "source."  # the events without a run a job-scoped token may see (with sources:read)


def event_source(event: Event) -> str | None:
    """The source an event without a run names in its data (``source.synced``...), or None."""
    if event.run_id is not None or '"source"' not in event.raw:
        return None
    source = event.data.get("source")
    return source if isinstance(source, str) else None


@dataclass(frozen=True)
class EventFilter:
    """A stream's filter; empty sets mean "any".  Hashable: streams with equal filters share one read."""

    types: frozenset[str] = frozenset()
    runs: frozenset[str] = frozenset()
    jobs: frozenset[str] = frozenset()
    sources: frozenset[str] = frozenset()
    # A narrowed ``runs:read`` token's jobs (None: every job); ``runless``: whether it sees events without a
    # run - and then only the sources' (NARROWED_RUNLESS): not runs.pruned (other jobs' run ids) or a refused
    # profile downgrade (another job's name and subject).
    grants: frozenset[Grant] | None = None
    runless: bool = True

    @classmethod
    def for_run(cls, run_id: str) -> EventFilter:
        return cls(runs=frozenset((run_id,)))

    @classmethod
    def parse(cls, params: Mapping[str, Any]) -> EventFilter:
        """From query parameters (comma-separated values; empty means absent); a bad value is a 400 naming it."""
        return cls(
            types=frozenset(
                t
                for raw in _checked(params, "type", "an event type (run.finished) or a prefix (run.*)")
                for t in _types(raw)
            ),
            runs=frozenset(_checked(params, "run", "a run id (26 digits and lowercase letters)")),
            jobs=frozenset(_checked(params, "job", "a job name")),
            sources=frozenset(_checked(params, "source", "a source name")),
        )

    @property
    def everything(self) -> bool:
        return not (self.types or self.runs or self.jobs or self.sources) and self.grants is None

    @property
    def needs_origin(self) -> bool:
        """Whether matching needs the job and source of each event's run."""
        return bool(self.jobs or self.sources) or self.grants is not None

    def narrowed(self, grants: frozenset[Grant] | None, runless: bool) -> EventFilter:
        """This filter, further limited to the runs of ``grants`` (a narrowed token's stream)."""
        if grants is None:
            return self
        return replace(self, grants=grants, runless=runless)

    def matches(self, event: Event, origin: tuple[str, str] | None = None) -> bool:
        """Whether ``event`` passes; ``origin`` is ``(job, source)`` of its run (needed only if ``needs_origin``)."""
        if self.types and event.type not in self.types:
            return False
        if self.runs and event.run_id not in self.runs:
            return False
        if self.jobs and (origin is None or origin[0] not in self.jobs):
            return False
        if self.sources:
            source = origin[1] if origin is not None else event_source(event)
            if source not in self.sources:
                return False
        if self.grants is not None:
            if event.run_id is None:
                return self.runless and event.type.startswith(NARROWED_RUNLESS)
            return origin is not None and any(g.matches(origin[1], origin[0]) for g in self.grants)
        return True

    def index_keys(self) -> list[tuple[str, str]]:
        """The keys the broadcaster files this filter under: the values of its most selective parameter.

        An event reaches the filter's full test only if one of these keys is its own, so an
        event of another run, job, source or type costs a stream nothing.
        """
        for name in ("run", "job", "source", "type"):
            values = getattr(self, name + "s")
            if values:
                return [(name, value) for value in sorted(values)]
        if self.grants is not None:
            if not self.runless and all(g.exact() for g in self.grants):
                return sorted({("job", g.job) for g in self.grants})
            return [GRANTED_KEY]  # globs: tested against every event, once per distinct set of grants
        return []

    def where(self, dialect: str) -> tuple[str, str, list[Any]]:
        """``(join, where, params)`` selecting the matching events of ``events e`` (``runs r`` joined when needed)."""
        clauses, params = [], []
        for column, values in (("e.type", self.types), ("e.run_id", self.runs), ("r.job", self.jobs)):
            if values:
                clauses.append(f"{column} IN ({','.join('?' * len(values))})")
                params.extend(sorted(values))
        if self.sources:
            marks = ",".join("?" * len(self.sources))
            clauses.append(f"(r.source IN ({marks}) OR (e.run_id IS NULL AND {DATA_SOURCE_SQL[dialect]} IN ({marks})))")
            params.extend(sorted(self.sources) * 2)
        if self.grants is not None:
            condition, values = grants_sql(self.grants, "r.source", "r.job")
            runless = f"(e.run_id IS NULL AND e.type LIKE '{NARROWED_RUNLESS}%')"
            clauses.append(f"({runless} OR {condition})" if self.runless else condition)
            params.extend(values)
        join = " LEFT JOIN runs r ON r.id = e.run_id" if self.needs_origin else ""
        return join, " AND ".join(clauses) or "1 = 1", params


def list_pattern(name: str) -> str:
    """The JSON Schema pattern of parameter ``name``: one value or several, comma-separated."""
    item = SYNTAX[name].pattern
    return f"^{item}(?:,{item})*$"


def _checked(params: Mapping[str, Any], name: str, what: str) -> list[str]:
    """The comma-separated values of ``name`` (none when absent or empty), each checked whole."""
    raw = params.get(name)
    if raw is None or raw == "":
        return []
    values = str(raw).split(",")
    if len(values) > MAX_VALUES:
        raise BadRequest(f"query parameter {name!r}: at most {MAX_VALUES} comma-separated values")
    for value in values:
        if not SYNTAX[name].fullmatch(value):
            raise BadRequest(f"query parameter {name!r}: expected {what}, got {value[:64]!r}")
    return values


def _types(raw: str) -> Iterable[str]:
    if raw.endswith(".*"):
        prefix = raw[:-1]
        covered = [t for t in TYPES if t.startswith(prefix)]
    else:
        covered = [t for t in TYPES if t == raw]
    if not covered:
        raise BadRequest(f"query parameter 'type': {raw!r} names no event type (types: {', '.join(TYPES)})")
    return covered
