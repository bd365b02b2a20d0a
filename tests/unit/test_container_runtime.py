"""Runtime discovery without an engine: where it looks, what it refuses, and what a plan says when nothing answers."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from flwd_server.config import ContainerSettings
from flwd_server.containers.runtime import ContainerRuntime, candidates, engine_name, tls_config
from flwd_server.engine import Engine
from flwd_server.errors import Unavailable, Unprocessable, UnsafeSource
from flwd_server.models import Job, Principal, Step
from flwd_server.planner import PlanRequest
from flwd_server.runs.container_executor import network_mode
from flwd_server.sources.oci import OciSource

DIGEST = "sha256:" + "b" * 64


def urls(settings: ContainerSettings, environ: dict[str, str]) -> list[str]:
    return [c.url for c in candidates(settings, environ)]


def test_auto_looks_at_docker_host_then_docker_then_podman_rootful_then_rootless():
    environ = {"DOCKER_HOST": "unix:///srv/engine.sock", "XDG_RUNTIME_DIR": "/run/user/1000"}
    assert urls(ContainerSettings(), environ) == [
        "unix:///srv/engine.sock",
        "unix:///var/run/docker.sock",
        "unix:///run/podman/podman.sock",
        "unix:///run/user/1000/podman/podman.sock",
    ]


def test_a_named_engine_limits_the_places_and_a_socket_setting_overrides_them():
    assert urls(ContainerSettings(runtime="podman"), {}) == ["unix:///run/podman/podman.sock"]
    assert urls(ContainerSettings(runtime="docker"), {}) == ["unix:///var/run/docker.sock"]
    assert urls(ContainerSettings(socket="unix:///x.sock"), {"DOCKER_HOST": "unix:///y.sock"}) == ["unix:///x.sock"]
    assert urls(ContainerSettings(runtime="none"), {"DOCKER_HOST": "unix:///y.sock"}) == []


@pytest.mark.parametrize("url", ["tcp://10.0.0.5:2375", "http://10.0.0.5:2375"])
def test_tcp_without_tls_is_refused(url):
    with pytest.raises(Unavailable, match="without TLS"):
        tls_config(url, {})
    with pytest.raises(Unavailable, match="without TLS"):
        tls_config(url, {"DOCKER_TLS_VERIFY": "0", "DOCKER_CERT_PATH": "/certs"})


def test_tcp_with_tls_verification_is_allowed(tmp_path):
    with pytest.raises(Unavailable, match="must hold ca.pem, cert.pem and key.pem"):
        tls_config("tcp://10.0.0.5:2376", {"DOCKER_TLS_VERIFY": "1", "DOCKER_CERT_PATH": str(tmp_path)})
    for name in ("ca.pem", "cert.pem", "key.pem"):
        (tmp_path / name).write_text("placeholder: TLSConfig only checks that the files exist")
    config = tls_config("tcp://10.0.0.5:2376", {"DOCKER_TLS_VERIFY": "1", "DOCKER_CERT_PATH": str(tmp_path)})
    assert (
        config is not None
        and config.verify is True
        and config.ca_cert == f"{tmp_path}/ca.pem"
        and config.cert == (f"{tmp_path}/cert.pem", f"{tmp_path}/key.pem")
    )
    assert tls_config("unix:///var/run/docker.sock", {}) is None


def test_a_plain_tcp_docker_host_is_reported_not_used():
    runtime = ContainerRuntime(ContainerSettings(), {"DOCKER_HOST": "tcp://127.0.0.1:2375"})
    engine, reason = runtime.status()
    assert engine is None and "tcp://127.0.0.1:2375 (DOCKER_HOST): " in reason and "without TLS" in reason


def test_nothing_found_names_every_place_tried(tmp_path):
    runtime = ContainerRuntime(ContainerSettings(runtime="podman"), {"XDG_RUNTIME_DIR": str(tmp_path)})
    engine, reason = runtime.status()
    assert engine is None
    assert "unix:///run/podman/podman.sock (podman's rootful socket): no such socket" in reason
    assert f"unix://{tmp_path}/podman/podman.sock" in reason and "podman system service" in reason
    with pytest.raises(Unavailable):
        runtime.client()


def test_a_socket_that_refuses_connections_does_not_answer(tmp_path):
    import socket

    path = tmp_path / "dead.sock"
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(path))  # bound, never listening: connections are refused
    try:
        engine, reason = ContainerRuntime(ContainerSettings(socket=f"unix://{path}")).status()
    finally:
        listener.close()
    assert engine is None and "does not answer" in reason


def test_runtime_none_says_so():
    assert ContainerRuntime(ContainerSettings(runtime="none")).status() == (
        None,
        "container.runtime is none: container steps cannot run",
    )


def test_the_engine_name_comes_from_the_version_answer():
    assert engine_name({"Components": [{"Name": "Podman Engine"}]}) == "podman"
    assert (
        engine_name({"Platform": {"Name": "Docker Engine - Community"}, "Components": [{"Name": "Engine"}]}) == "docker"
    )


@pytest.mark.parametrize(
    ("requires", "network", "expected"),
    [
        ((), None, "none"),
        (("network",), None, None),
        ((), "default", None),
        ((), "host", "host"),
        (("network",), "none", "none"),
    ],
)
def test_containers_get_no_network_unless_the_job_requires_it(requires, network, expected):
    step = Step(name="s", image="registry.example.org/x@" + DIGEST, network=network)
    assert network_mode(Job(name="j", source="s", requires=requires, steps=(step,)), step) == expected


# -- the engine ------------------------------------------------------------------


@pytest.fixture
def container_source(tmp_path: Path) -> Path:
    jobs = tmp_path / "src" / "jobs"
    jobs.mkdir(parents=True)
    job = {
        "name": "boxed",
        "steps": [{"name": "box", "image": "registry.example.org/x@" + DIGEST, "command": ["true"]}],
    }
    (jobs / "boxed.yaml").write_text(yaml.safe_dump(job))
    return tmp_path / "src"


def test_without_a_runtime_a_plan_says_so_and_a_run_is_rejected_with_the_reason(
    make_settings, container_source, tmp_path
):
    settings = make_settings(
        **{
            "container.socket": f"unix://{tmp_path}/absent/podman.sock",
            "container.verify_signatures": "disabled",
            "container.allowed_registries": ["registry.example.org"],
            "sources": [{"type": "local", "name": "boxes", "path": str(container_source)}],
        }
    )
    engine = Engine(settings)
    try:
        who = Principal("tester", frozenset({"runs:write"}))
        plan = engine.plan(PlanRequest("boxed", {}), who)
        runtime = next(d for d in plan.decisions if d.check == "container-runtime")
        assert plan.runnable is False and runtime.verdict.value == "deny"
        assert f"unix://{tmp_path}/absent/podman.sock (container.socket): no such socket" in runtime.reason
        run, _ = engine.submit(PlanRequest("boxed", {}), who)
        assert run.status.value == "rejected" and "container-runtime" in run.reason and "no such socket" in run.reason
    finally:
        engine.close(grace=0)


def test_make_source_builds_oci_sources_and_checks_their_registry(make_settings):
    engine = Engine(
        make_settings(
            **{"container.allowed_registries": ["127.0.0.1:1"], "container.insecure_registries": ["127.0.0.1:1"]}
        )
    )
    try:
        source = engine.make_source({"type": "oci", "name": "tools", "ref": "127.0.0.1:1/addons/tools:1"})
        assert isinstance(source, OciSource) and source.kind == "oci"
        assert str(source.ref) == "127.0.0.1:1/addons/tools:1"
        snap = source.snapshot()  # nothing listens on port 1: an error in the snapshot, not an exception
        assert snap.jobs == {} and "cannot reach registry 127.0.0.1:1" in snap.errors[0]["message"]
        assert engine.jobs()  # the other sources are unaffected
        with pytest.raises(UnsafeSource, match="not in container.allowed_registries"):
            engine.make_source({"type": "oci", "name": "evil", "ref": "evil.example.com/addons/tools:1"})
        with pytest.raises(Unprocessable):
            engine.make_source({"type": "oci", "name": "bad", "ref": "not a ref"})
    finally:
        engine.close(grace=0)
