"""The grammar of job-narrowed scopes (``runs:write:SOURCE:JOB``) and what they match."""

from __future__ import annotations

import hashlib
import sqlite3
import time

import pytest

from flwd_server.auth.scopes import Grant, grants_of, grants_sql, is_valid_scope, parse_scope, ticket_scopes
from flwd_server.errors import ScopeMissing
from flwd_server.models import Event, Principal
from flwd_server.store.event_filter import EventFilter


@pytest.mark.parametrize(
    "scope",
    ["runs:write", "runs:read", "runs:write:bar:sleepy", "runs:read:tools:*", "runs:write:*:deploy-*", "runs:read:*:*"],
)
def test_valid_scopes(scope):
    assert is_valid_scope(scope)


@pytest.mark.parametrize(
    "scope",
    [
        "runs:write:bar",  # a SOURCE without a JOB
        "runs:write:bar:sleepy:extra",
        "runs:write::sleepy",
        "runs:write:Bar:sleepy",  # names are lowercase
        "runs:write:bar:sle epy",
        "runs:write:bar:%",
        "jobs:read:bar:sleepy",  # only runs:read and runs:write narrow
        "runs:downgrade:bar:sleepy",
        "runs:execute",
        "",
    ],
)
def test_invalid_scopes(scope):
    assert not is_valid_scope(scope)
    assert parse_scope(scope) is None


@pytest.mark.parametrize(
    ("source", "job", "expected"),
    [
        ("bar", "sleepy", True),
        ("bar", "sleepy2", False),  # a job whose name starts with the granted one
        ("barn", "sleepy", False),  # a source whose name starts with the granted one
        ("ba", "sleepy", False),
        ("bar", "sleep", False),
        ("foo", "sleepy", False),
    ],
)
def test_an_exact_grant_matches_only_its_job(source, job, expected):
    assert Principal("p", frozenset({"runs:write:bar:sleepy"})).allows("runs:write", source, job) is expected


@pytest.mark.parametrize(
    ("scope", "source", "job", "expected"),
    [
        ("runs:write:tools:*", "tools", "anything", True),
        ("runs:write:tools:*", "toolsx", "anything", False),
        ("runs:write:*:deploy-*", "web", "deploy-prod", True),
        ("runs:write:*:deploy-*", "web", "predeploy-prod", False),
        ("runs:write:b*r:x", "bazaar", "x", True),
        ("runs:write:b.r:x", "bar", "x", False),  # '.' is a name character, not a wildcard
        ("runs:write:b_r:x", "bar", "x", False),
    ],
)
def test_globs_match_within_their_part(scope, source, job, expected):
    assert Principal("p", frozenset({scope})).allows("runs:write", source, job) is expected


def test_plain_scope_means_every_job_and_narrowed_scopes_open_the_route_only():
    plain = Principal("p", frozenset({"runs:write"}))
    narrow = Principal("p", frozenset({"runs:write:bar:sleepy", "runs:read:*:x"}))
    assert plain.grants("runs:write") is None and plain.allows("runs:write", "any", "job")
    assert narrow.may_use("runs:write") and not narrow.has_scope("runs:write")
    assert narrow.may_use("runs:read") and not narrow.may_use("jobs:read")
    assert grants_of(["jobs:read"], "runs:read") == frozenset()
    assert not Principal("p", frozenset({"jobs:read"})).may_use("runs:read")
    with pytest.raises(ScopeMissing) as refused:
        narrow.require("runs:write", "bar", "sleepy2")
    assert refused.value.scope == "runs:write:bar:sleepy2"
    narrow.require("runs:write", "bar", "sleepy")


def test_grants_sql_selects_the_same_jobs_as_matching():
    db = sqlite3.connect(":memory:")
    db.execute("CREATE TABLE runs (source TEXT, job TEXT)")
    rows = [("bar", "sleepy"), ("bar", "sleepy2"), ("barn", "sleepy"), ("tools", "a_b"), ("tools", "axb"), ("x", "y")]
    db.executemany("INSERT INTO runs VALUES (?, ?)", rows)
    for scopes in (["runs:read:bar:sleepy"], ["runs:read:tools:a_b"], ["runs:read:*:sleep*", "runs:read:x:*"], []):
        grants = grants_of(scopes, "runs:read")
        where, params = grants_sql(grants)
        found = set(db.execute(f"SELECT source, job FROM runs WHERE {where}", params).fetchall())
        assert found == {r for r in rows if any(g.matches(*r) for g in grants)}, scopes


def test_a_narrowed_event_filter_passes_only_its_runs_and_runless_events_if_allowed():
    grants = frozenset({Grant("bar", "sleepy")})
    mine = Event(1, "r1", "run.queued", 0.0, "{}")
    other = Event(2, "r2", "run.queued", 0.0, "{}")
    runless = Event(3, None, "source.synced", 0.0, '{"source": "bar"}')
    narrowed = EventFilter().narrowed(grants, runless=False)
    assert not narrowed.everything and narrowed.needs_origin and narrowed.index_keys() == [("job", "sleepy")]
    assert narrowed.matches(mine, ("sleepy", "bar"))
    assert not narrowed.matches(other, ("sleepy", "barn"))
    assert not narrowed.matches(other, ("sleepy2", "bar"))
    assert not narrowed.matches(runless)
    assert EventFilter().narrowed(grants, runless=True).matches(runless)
    # Other events without a run name other jobs' runs or subjects: never for a narrowed token.
    pruned = Event(4, None, "runs.pruned", 0.0, '{"runs": [{"id": "r1"}]}')
    refused = Event(5, None, "policy.profile_downgrade", 0.0, '{"job": "foo:other", "granted": false}')
    assert not EventFilter().narrowed(grants, runless=True).matches(pruned)
    assert not EventFilter().narrowed(grants, runless=True).matches(refused)
    assert EventFilter().narrowed(None, runless=True).matches(pruned)
    assert EventFilter().narrowed(None, runless=False) == EventFilter()


def test_a_ticket_carries_only_the_read_scopes():
    asked = {"runs:read:bar:*", "runs:write", "sources:read", "jobs:read", "runs:write:bar:x", "bogus"}
    assert ticket_scopes(asked) == {"runs:read:bar:*", "sources:read"}


def test_a_ticket_stands_for_the_read_scopes_of_its_asker_and_an_old_one_for_runs_read(engine):
    asker = Principal("bob", frozenset({"runs:read:bar:*", "runs:write", "sources:read"}))
    ticket = engine.issue_stream_ticket(asker)["ticket"]
    assert engine.redeem_stream_ticket(ticket, None) == Principal("bob", frozenset({"runs:read:bar:*", "sources:read"}))
    digest = hashlib.sha256(b"x" * 43).hexdigest()  # the stored form of a ticket
    engine.store.create_ticket(digest, "old", None, time.time() + 60)  # as a ticket stored before scopes were
    assert engine.redeem_stream_ticket("x" * 43, None) == Principal("old", frozenset({"runs:read"}))
