"""OCI add-on sources: published with the CLI, pulled by a real server over the distribution API.

The add-on lives in the registry behind the Bearer token flow (pulls are
anonymous, the CLI pushes with Basic credentials at the token realm).  The
sources are registered through the config file's ``sources:`` list.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from flwd_server.config import load_settings
from flwd_server.containers.registry_client import DigestMismatch
from flwd_server.engine import Engine
from flwd_server.errors import UnsafeSource
from tests.fixtures.containers import PUSHER
from tests.fixtures.server import ServerProcess

pytestmark = pytest.mark.container


def publish(folder: Path, ref: str, *extra: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "FLWD_REGISTRY_USERNAME": PUSHER[0], "FLWD_REGISTRY_PASSWORD": PUSHER[1]}
    env = {k: v for k, v in env.items() if k not in ("FLWD_DATA_DIR",)}
    return subprocess.run(
        [sys.executable, "-m", "flwd_cli", ":addon", "publish", str(folder), ref, "--insecure", *extra],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )


def addon_folder(root: Path, image: str, marker: str) -> Path:
    (root / "jobs").mkdir(parents=True)
    hello = {
        "name": "addon-hello",
        "description": f"Greets ({marker})",
        "args": {"name": {"type": "string", "default": "World"}},
        "steps": [{"name": "greet", "run": f'echo "{marker}: hello, $FLWD_ARG_NAME"'}],
    }
    boxed = {
        "name": "addon-boxed",
        "steps": [{"name": "box", "image": image, "command": ["echo", "boxed", "{{ args.word }}"]}],
        "args": {"word": {"type": "string", "default": "ok"}},
    }
    (root / "jobs" / "hello.yaml").write_text(yaml.safe_dump(hello))
    (root / "jobs" / "boxed.yaml").write_text(yaml.safe_dump(boxed))
    return root


@pytest.fixture(scope="module")
def addons(tmp_path_factory, registry, token_registry, podman, images, signing_keys):
    from tests.fixtures.containers import cosign_sign

    image = images.push(registry, "addons/box", "a")
    cosign_sign(registry, image, signing_keys["trusted"])
    root = tmp_path_factory.mktemp("addons")
    signed = publish(
        addon_folder(root / "tools", image, "tools"),
        f"{token_registry.host}/addons/tools:1",
        "--sign-key",
        str(signing_keys["trusted_pem"]),
    )
    assert signed.returncode == 0, signed.stderr
    unsigned = publish(addon_folder(root / "unsigned", image, "unsigned"), f"{token_registry.host}/addons/unsigned:1")
    assert unsigned.returncode == 0, unsigned.stderr
    tampered = publish(
        addon_folder(root / "tampered", image, "tampered"),
        f"{registry.host}/addons/tampered:1",
        "--sign-key",
        str(signing_keys["trusted_pem"]),
    )
    assert tampered.returncode == 0, tampered.stderr
    # Tamper with the stored layer: the registry keeps serving it under its old digest.
    manifest = yaml.safe_load(registry.manifest("addons/tampered", "1")[0])
    layer = registry.blob_file(manifest["layers"][0]["digest"])
    layer.write_bytes(layer.read_bytes()[:-8] + b"tampered")
    container = {
        "runtime": "podman",
        "socket": podman.url,
        "verify_signatures": "enforce",
        "signature_keys": [str(signing_keys["trusted_pub"])],
        "allowed_registries": [registry.host, token_registry.host],
        "insecure_registries": [registry.host, token_registry.host],
    }
    sources = [
        {"type": "oci", "name": "tools", "ref": f"{token_registry.host}/addons/tools:1"},
        {"type": "oci", "name": "unsigned", "ref": f"{token_registry.host}/addons/unsigned:1"},
        {"type": "oci", "name": "tampered", "ref": f"{registry.host}/addons/tampered:1"},
    ]
    server = ServerProcess(root / "server", {"container": container, "sources": sources}, dev=True, env=None).start()
    yield {
        "server": server,
        "digest": signed.stdout.strip().split("@")[1],
        "container": container,
        "sources": sources,
        "root": root,
    }
    server.stop(timeout=30)


def test_an_addon_published_with_the_cli_lists_its_jobs_and_runs_them(addons, token_registry):
    server = addons["server"]
    jobs = server.get("/jobs?source=tools").json()["jobs"]
    assert sorted(j["name"] for j in jobs) == ["addon-boxed", "addon-hello"]
    assert any(r["scope"] == "repository:addons/tools:pull" for r in token_registry.token.requests)

    plan = server.post("/plans", {"job": "addon-hello", "source": "tools", "args": {"name": "Ada"}}).json()["plan"]
    assert plan["revision"] == addons["digest"] and plan["runnable"] is True
    run = server.submit("tools:addon-hello", {"name": "Ada"})
    assert run["revision"] == addons["digest"]
    assert server.wait_finished(run["id"], timeout=30)["status"] == "succeeded"
    lines = [e["data"]["data"]["line"] for e in server.events(run["id"]) if e["event"] == "step.output"]
    assert lines == ["tools: hello, Ada"]

    boxed = server.submit("tools:addon-boxed", {"word": "fine"})
    finished = server.wait_finished(boxed["id"], timeout=60)
    assert finished["status"] == "succeeded" and finished["revision"] == addons["digest"]
    assert [e["data"]["data"]["line"] for e in server.events(boxed["id"]) if e["event"] == "step.output"] == [
        "boxed fine"
    ]


def test_an_unsigned_addon_is_refused_under_enforce(addons):
    server = addons["server"]
    assert server.get("/jobs?source=unsigned").json()["jobs"] == []
    assert server.post("/plans", {"job": "addon-hello", "source": "unsigned"}).status_code == 404
    assert "is not signed" in server.logs()


def test_a_tampered_addon_is_refused(addons):
    server = addons["server"]
    assert server.get("/jobs?source=tampered").json()["jobs"] == []
    assert server.post("/plans", {"job": "addon-hello", "source": "tampered"}).status_code == 404
    assert "hash to" in server.logs()


def test_the_engine_reports_why_each_addon_was_refused(addons, tmp_path):
    settings = load_settings(None, {"data_dir": str(tmp_path), "container": addons["container"]}, environ={})
    engine = Engine(settings)
    try:
        sources = {s["name"]: engine.make_source(s) for s in addons["sources"]}
        assert sources["tools"].sync().revision == addons["digest"]
        with pytest.raises(UnsafeSource, match="is not signed"):
            sources["unsigned"].sync()
        with pytest.raises(DigestMismatch):
            sources["tampered"].sync()
        assert not any(p.name.startswith(".extract") for p in (tmp_path / "addons" / "tampered").glob("*"))
        pinned = engine.make_source(
            {
                "type": "oci",
                "name": "pinned",
                "ref": f"{addons['sources'][0]['ref'].rsplit(':', 1)[0]}@{addons['digest']}",
            }
        )
        assert sorted(pinned.snapshot().jobs) == ["addon-boxed", "addon-hello"]
    finally:
        engine.close(grace=0)


def test_permissive_signatures_load_an_unsigned_addon_and_say_so(addons, tmp_path):
    container = {**addons["container"], "verify_signatures": "permissive"}
    engine = Engine(load_settings(None, {"data_dir": str(tmp_path), "container": container}, environ={}))
    try:
        snap = engine.make_source(addons["sources"][1]).sync()
        assert sorted(snap.jobs) == ["addon-boxed", "addon-hello"]
        assert "not signed" in snap.errors[0]["message"] and "permissive" in snap.errors[0]["message"]
    finally:
        engine.close(grace=0)


def test_publish_refuses_invalid_job_files_and_pushes_nothing(tmp_path, token_registry):
    (tmp_path / "jobs").mkdir()
    (tmp_path / "jobs" / "bad.yaml").write_text("name: Bad Name\nsteps: []\n")
    mark = token_registry.mark()
    done = publish(tmp_path, f"{token_registry.host}/addons/bad:1")
    assert done.returncode == 2 and "jobs/bad.yaml" in done.stderr and "nothing was published" in done.stderr
    assert token_registry.requests_since(mark) == []


def test_publish_needs_a_registry_and_a_tag(tmp_path):
    (tmp_path / "jobs").mkdir()
    assert "name the registry" in publish(tmp_path, "tools:1").stderr
    assert "expected a tag" in publish(tmp_path, "registry.example.org/tools@sha256:" + "a" * 64).stderr


def test_every_node_serves_and_runs_the_digest_in_the_database_not_the_moving_tag(
    addons, tmp_path, token_registry, signing_keys
):
    """Several nodes share one database: node B serves the digest node A synced, even after the tag moved."""
    ref = f"{token_registry.host}/addons/moving:1"
    key = str(signing_keys["trusted_pem"])
    first = publish(addon_folder(tmp_path / "v1", "busybox", "first"), ref, "--sign-key", key)
    assert first.returncode == 0, first.stderr
    spec = {"type": "oci", "name": "moving", "ref": ref}
    node_a = Engine(
        load_settings(None, {"data_dir": str(tmp_path / "a"), "container": addons["container"]}, environ={})
    )
    node_b = Engine(
        load_settings(None, {"data_dir": str(tmp_path / "b"), "container": addons["container"]}, environ={})
    )
    try:
        on_a = node_a.make_source(spec)
        digest_one = on_a.sync().revision
        second = publish(addon_folder(tmp_path / "v2", "busybox", "second"), ref, "--sign-key", key)  # the tag moves on
        assert second.returncode == 0, second.stderr
        digest_two = second.stdout.strip().split("@")[1]
        assert digest_two != digest_one

        on_b = node_b.make_source(spec)
        on_b.load_state({"revision": digest_one})  # what the database says
        snap = on_b.snapshot()
        assert snap.revision == digest_one and "first" in snap.jobs["addon-hello"].description
        assert "second" not in (Path(on_b.checkout_for(digest_one)) / "jobs" / "hello.yaml").read_text()

        fresh = node_b.make_source({**spec, "name": "moving"})
        fresh.root = tmp_path / "c" / "moving"  # a third node that never unpacked anything
        assert "first" in (Path(fresh.checkout_for(digest_one)) / "jobs" / "hello.yaml").read_text()

        on_a.load_state({"revision": digest_two})  # node B synced the new tag: node A follows
        assert on_a.snapshot().revision == digest_two
        assert "second" in on_a.snapshot().jobs["addon-hello"].description
        assert fresh.checkout_for("sha256:" + "0" * 64) is None  # no such digest: no files, no crash
    finally:
        node_a.close(grace=0)
        node_b.close(grace=0)
