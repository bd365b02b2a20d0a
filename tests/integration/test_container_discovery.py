"""Runtime discovery against a real podman socket (in-process, no flwd server needed)."""

from __future__ import annotations

import pytest

from flwd_server.config import ContainerSettings
from flwd_server.containers.runtime import ContainerRuntime

pytestmark = pytest.mark.container


def test_auto_finds_rootless_podman_under_xdg_runtime_dir(podman, tmp_path):
    (tmp_path / "podman").mkdir()
    (tmp_path / "podman" / "podman.sock").symlink_to(podman.socket)
    runtime = ContainerRuntime(ContainerSettings(), {"XDG_RUNTIME_DIR": str(tmp_path)})
    try:
        assert runtime.status() == ("podman", None)
        assert runtime.client().ping() is True
    finally:
        runtime.close()


def test_auto_uses_a_unix_docker_host(podman):
    runtime = ContainerRuntime(ContainerSettings(), {"DOCKER_HOST": podman.url})
    try:
        assert runtime.status() == ("podman", None)
    finally:
        runtime.close()


def test_an_engine_other_than_the_one_asked_for_is_not_used(podman):
    runtime = ContainerRuntime(ContainerSettings(runtime="docker", socket=podman.url), {})
    engine, reason = runtime.status()
    assert engine is None and "answers as podman, but container.runtime is docker" in reason


def test_a_runtime_that_appears_later_is_found_after_a_failure(podman, tmp_path):
    link = tmp_path / "engine.sock"
    runtime = ContainerRuntime(ContainerSettings(socket=f"unix://{link}"), {})
    try:
        engine, reason = runtime.status()
        assert engine is None and "no such socket" in reason
        link.symlink_to(podman.socket)
        runtime.invalidate()  # what the executor does after a failed call
        assert runtime.status() == ("podman", None)
        link.unlink()
        runtime.client().close()  # the engine "goes away": the next check pings, fails, looks again
        runtime.invalidate()
        engine, reason = runtime.status()
        assert engine is None and "no such socket" in reason
    finally:
        runtime.close()
