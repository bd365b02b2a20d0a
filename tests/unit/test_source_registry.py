"""The source registry through the engine: persistence, other processes' changes, failures, config sources."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from flwd_server.engine import Engine
from flwd_server.errors import (
    AmbiguousJob,
    ConfigError,
    Conflict,
    JobNotFound,
    SourceError,
    SourceNotFound,
    Unprocessable,
    UnsafeSource,
)
from flwd_server.models import Principal
from flwd_server.planner import PlanRequest
from tests.fixtures.git import job_yaml

ADMIN = Principal("tester", frozenset({"sources:read", "sources:write", "jobs:read"}))


@pytest.fixture
def repo(make_git_repo):
    repo = make_git_repo("tools")
    repo.write("jobs/tool.yaml", job_yaml("tool", "echo one", "one"))
    repo.commit("one")
    return repo


@pytest.fixture
def engines(make_settings):
    """Two engines on one database: what two gunicorn workers are to each other."""
    made: list[Engine] = []

    def make(**overrides) -> Engine:
        engine = Engine(make_settings(**overrides))
        made.append(engine)
        return engine

    yield make
    for engine in made:
        engine.close(grace=0)


def plan_revision(engine: Engine, job: str, source: str | None = None) -> str | None:
    return engine.plan(PlanRequest(job=job, args={}, source=source), ADMIN).job.revision


def test_a_git_source_added_in_one_engine_is_used_and_removed_through_another(engines, repo, data_dir):
    first, second = engines(), engines()
    added = first.add_source({"type": "git", "name": "tools", "url": repo.url, "ref": "main"}, ADMIN)
    assert added["revision"] == repo.head() and [j["name"] for j in added["jobs"]] == ["tool"]
    assert plan_revision(second, "tool") == repo.head()
    assert plan_revision(second, "tools:tool") == repo.head()
    second.remove_source("tools", ADMIN)
    with pytest.raises(JobNotFound):
        first.job("tool")
    assert not (data_dir / "sources" / "tools").exists()


def test_a_sync_in_one_engine_moves_the_other_to_the_new_commit(engines, repo):
    first, second = engines(), engines()
    first.add_source({"type": "git", "name": "tools", "url": repo.url, "ref": "main"}, ADMIN)
    old = plan_revision(second, "tool")
    repo.write("jobs/tool.yaml", job_yaml("tool", "echo two", "two"))
    new = repo.commit("two")
    result = first.sync_source("tools", ADMIN)
    assert result["changed"] is True and result["previous_revision"] == old and result["source"]["revision"] == new
    assert second.job("tool").description == "two"
    assert plan_revision(second, "tool") == new


def test_sources_survive_a_new_engine_on_the_same_database(engines, repo, tmp_path):
    folder = tmp_path / "folder"
    (folder / "jobs").mkdir(parents=True)
    (folder / "jobs" / "local-job.yaml").write_text(job_yaml("local-job", "true"))
    engine = engines()
    engine.add_source({"type": "git", "name": "tools", "url": repo.url}, ADMIN)
    engine.add_source({"type": "local", "name": "folder", "path": str(folder)}, ADMIN)
    engine.close(grace=0)
    again = engines()
    assert [s["name"] for s in again.sources()] == ["examples", "tools", "folder"]
    assert again.job("tool").revision == repo.head()
    assert again.job("local-job").source == "folder"


def test_a_failed_sync_keeps_the_last_good_revision_and_records_why(engines, repo, tmp_path):
    engine = engines()
    engine.add_source({"type": "git", "name": "tools", "url": repo.url, "ref": "main"}, ADMIN)
    good = repo.head()
    moved = tmp_path / "moved-away"
    shutil.move(repo.path, moved)
    with pytest.raises(SourceError, match="does not appear to be a git repository"):
        engine.sync_source("tools", ADMIN)
    source = engine.source("tools")
    assert source["revision"] == good and "does not appear" in source["last_error"]
    assert engine.job("tool").revision == good
    events = [e for e in engine.store.events_after(0, limit=100) if e.type.startswith("source.")]
    assert [e.type for e in events] == ["source.synced", "source.failed"]
    assert events[1].run_id is None and events[1].data["revision"] == good
    shutil.move(moved, repo.path)
    assert engine.sync_source("tools", ADMIN)["source"]["last_error"] is None


def test_refused_registrations_change_nothing(engines, repo, data_dir, tmp_path):
    engine = engines()
    engine.add_source({"type": "git", "name": "tools", "url": repo.url}, ADMIN)
    before = sorted(p.name for p in (data_dir / "sources").iterdir())
    with pytest.raises(Conflict):
        engine.add_source({"type": "git", "name": "tools", "url": repo.url}, ADMIN)
    with pytest.raises(Conflict):
        engine.add_source({"type": "local", "name": "examples", "path": str(tmp_path)}, ADMIN)
    with pytest.raises(UnsafeSource, match="does not exist"):
        engine.add_source({"type": "local", "name": "nowhere", "path": str(tmp_path / "nope")}, ADMIN)
    with pytest.raises(UnsafeSource):
        engine.add_source({"type": "git", "name": "evil", "url": "ext::sh -c id"}, ADMIN)
    with pytest.raises(Unprocessable, match="was not added"):
        engine.add_source({"type": "git", "name": "missing", "url": f"file://{tmp_path}/no-repo"}, ADMIN)
    with pytest.raises(Unprocessable, match="was not added"):
        engine.add_source({"type": "git", "name": "badref", "url": repo.url, "ref": "no-such-branch"}, ADMIN)
    with pytest.raises(Unprocessable) as bad:
        engine.add_source({"type": "git", "name": "Bad Name", "url": repo.url}, ADMIN)
    assert bad.value.errors[0]["field"] == "name"
    with pytest.raises(Unprocessable) as unknown:
        engine.add_source({"type": "git", "name": "x", "url": repo.url, "branch": "main"}, ADMIN)
    assert unknown.value.errors[0]["field"] == "branch"
    assert sorted(p.name for p in (data_dir / "sources").iterdir()) == before
    assert [s["name"] for s in engine.sources()] == ["examples", "tools"]


def test_the_bundled_source_cannot_be_removed_and_unknown_ones_are_404(engines):
    engine = engines()
    with pytest.raises(Conflict, match="bundled"):
        engine.remove_source("examples", ADMIN)
    with pytest.raises(SourceNotFound):
        engine.remove_source("nope", ADMIN)
    with pytest.raises(SourceNotFound):
        engine.sync_source("nope", ADMIN)


def test_a_job_in_two_sources_needs_a_hint(engines, repo, tmp_path):
    folder = tmp_path / "mirror"
    (folder / "jobs").mkdir(parents=True)
    (folder / "jobs" / "tool.yaml").write_text(job_yaml("tool", "true"))
    engine = engines()
    engine.add_source({"type": "git", "name": "tools", "url": repo.url}, ADMIN)
    engine.add_source({"type": "local", "name": "mirror", "path": str(folder)}, ADMIN)
    with pytest.raises(AmbiguousJob) as ambiguous:
        engine.job("tool")
    assert ambiguous.value.candidates == ["tools:tool", "mirror:tool"]
    assert engine.job("tool", "mirror").source == "mirror"
    assert engine.job("tools:tool").revision == repo.head()


def test_config_sources_are_registered_synced_and_protected(engines, repo, make_settings, tmp_path):
    config = ({"type": "git", "name": "cfg", "url": repo.url, "ref": "main"},)
    engine = Engine(make_settings(sources=[dict(s) for s in config]), local_affinity=True)  # the CLI syncs new ones
    try:
        source = engine.source("cfg")
        assert source["origin"] == "config" and source["revision"] == repo.head() and source["removable"] is False
        with pytest.raises(Conflict, match="config file"):
            engine.remove_source("cfg", ADMIN)
    finally:
        engine.close(grace=0)
    server = engines()  # a server start with a config that no longer has it
    server.prepare_sources()
    with pytest.raises(SourceNotFound):
        server.source("cfg")


def test_a_config_source_that_cannot_work_stops_start_up_naming_it(make_settings, tmp_path):
    with pytest.raises(ConfigError) as error:
        Engine(make_settings(sources=[{"type": "local", "name": "gone", "path": str(tmp_path / "gone")}]))
    assert error.value.key == "sources[0]"
    with pytest.raises(ConfigError, match="transport"):
        Engine(make_settings(sources=[{"type": "git", "name": "evil", "url": "ext::sh -c id"}]))


def test_a_registered_source_whose_folder_vanished_is_listed_with_the_problem(engines, tmp_path: Path):
    folder = tmp_path / "folder"
    (folder / "jobs").mkdir(parents=True)
    engine = engines()
    engine.add_source({"type": "local", "name": "folder", "path": str(folder)}, ADMIN)
    engine.close(grace=0)
    shutil.rmtree(folder)
    again = engines()
    listed = again.source("folder")
    assert listed["jobs"] == [] and "does not exist" in listed["errors"][0]["message"]
    again.remove_source("folder", ADMIN)


def test_a_password_in_a_url_never_reaches_answers_events_or_logs(engines, caplog):
    engine = engines()
    url = "https://bob:s3cret-pw@127.0.0.1:1/tools.git"  # a closed loopback port: the fetch fails at once
    with pytest.raises(Unprocessable) as refused:
        engine.add_source({"type": "git", "name": "private", "url": url}, ADMIN)
    text = str(refused.value.to_problem()) + caplog.text
    assert "bob:***@127.0.0.1" in text
    assert "s3cret-pw" not in text
    engine.store.flush()
    assert all("s3cret-pw" not in e.raw for e in engine.store.events_after(0, limit=1000))
