"""Fixtures: settings, an engine, a store, a hub and an app for unit tests; a real ``flwd :serve`` for
integration tests.  Helpers that tests import live in ``tests/fixtures/``; nothing imports this file."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from flwd_server.config import Settings, load_settings
from tests.fixtures.server import ServerProcess

pytest_plugins = [
    "tests.fixtures.browser",
    "tests.fixtures.containers",
    "tests.fixtures.git",
    "tests.fixtures.nginx",
    "tests.fixtures.postgres",
    "tests.fixtures.receiver",
    "tests.fixtures.tokens",
]


@pytest.fixture(autouse=True)
def _isolated_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No test reads the developer's own flwd config, data dir or token."""
    for name in list(os.environ):
        if name.startswith("FLWD_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("FLWD_DATA_DIR", str(tmp_path / "flwd-data"))


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    path = tmp_path / "data"
    path.mkdir()
    return path


@pytest.fixture
def make_settings(data_dir: Path) -> Callable[..., Settings]:
    def make(**overrides: Any) -> Settings:
        flat = {"data_dir": str(data_dir), **overrides}
        return load_settings(None, flat, environ={})

    return make


@pytest.fixture
def engine(make_settings: Callable[..., Settings]) -> Iterator[Any]:
    from flwd_server.engine import Engine

    eng = Engine(make_settings(**{"sse.poll_interval": 0.01}))
    yield eng
    eng.close(grace=0)


@pytest.fixture
def app(make_settings: Callable[..., Settings]) -> Iterator[Any]:
    """The Flask app on a --dev engine of its own."""
    from flwd_server.engine import Engine
    from flwd_server.web.app import create_app

    eng = Engine(make_settings(dev=True))
    yield create_app(engine=eng)
    eng.close(grace=0)


@pytest.fixture
def store(any_store: Any) -> Any:
    """A migrated store, on SQLite and on PostgreSQL in turn."""
    return any_store


@pytest.fixture
def hub(sqlite_store: Any) -> Iterator[Any]:
    """A started event hub on a SQLite store, with a small buffer (50 events) that tests can outrun."""
    from flwd_server.events.hub import EventHub

    h = EventHub(sqlite_store, poll_interval=0.01, max_events=50)
    h.start()
    yield h
    h.close()


@pytest.fixture
def start_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., ServerProcess]]:
    started: list[ServerProcess] = []

    def start(
        config: dict[str, Any] | None = None,
        *,
        dev: bool = True,
        env: dict[str, str] | None = None,
        wait: bool = True,
        host: str = "127.0.0.1",
        root: Path | None = None,
    ) -> ServerProcess:
        server = ServerProcess(root or tmp_path_factory.mktemp("server"), config or {}, dev, env, host)
        started.append(server)
        return server.start(wait=wait)

    yield start
    for server in started:
        if server.proc is not None:
            server.stop(timeout=30)


@pytest.fixture
def server(start_server: Callable[..., ServerProcess]) -> ServerProcess:
    """A dev server on the bundled jobs, one worker."""
    return start_server({"sse": {"heartbeat": 1.0}})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "integration" in item.path.parts:
            item.add_marker(pytest.mark.integration)


@pytest.fixture(autouse=True, scope="session")
def _no_run_cgroups_left() -> Iterator[None]:
    """Servers that tests kill (SIGKILL) cannot remove their run cgroups; a next start would sweep them.

    At the end of the session the groups of every process that is gone are removed here, so the
    machine is left as it was; groups of live processes (none should be left) are not touched.
    """
    from flwd_server.runs.cgroups import discover, leftover_bases, sweep_leftovers

    before = leftover_bases(discover())
    yield
    layout = discover()
    for base in leftover_bases(layout) - before:
        sweep_leftovers(layout, base, quiet=True)
