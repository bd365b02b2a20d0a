"""OCI add-on sources: published with the CLI, pulled by a real server over the distribution API.

The add-on lives in the registry behind the Bearer token flow (pulls are
anonymous, the CLI pushes with Basic credentials at the token realm).  The
sources are registered through the config file's ``sources:`` list.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from flwd_server.config import load_settings
from flwd_server.containers.registry_client import DigestMismatch
from flwd_server.engine import Engine
from flwd_server.sources.oci import AddonRefused
from tests.fixtures.containers import PUSHER
from tests.fixtures.helpers import free_port
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
    gone = f"127.0.0.1:{free_port()}"  # allowed, but no registry listens there
    server_container = {
        **container,
        "allowed_registries": [*container["allowed_registries"], gone],
        "insecure_registries": [*container["insecure_registries"], gone],
    }
    server_sources = [*sources, {"type": "oci", "name": "unreachable", "ref": f"{gone}/addons/tools:1"}]
    server = ServerProcess(
        root / "server", {"container": server_container, "sources": server_sources}, dev=True, env=None
    ).start()
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
    source = server.get("/sources/unsigned").json()["source"]  # the source is there, with no jobs and the reason
    assert source["jobs"] == [] and "is not signed" in source["errors"][0]["message"]


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
        with pytest.raises(AddonRefused, match="is not signed"):
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


def test_publish_names_the_line_of_a_yaml_error(tmp_path, token_registry):
    (tmp_path / "jobs").mkdir()
    (tmp_path / "jobs" / "broken.yaml").write_text("name: broken\nsteps:\n\t- run: 'true'\n")
    done = publish(tmp_path, f"{token_registry.host}/addons/broken:1")
    assert done.returncode == 2 and "jobs/broken.yaml:3: (file): not valid YAML" in done.stderr, done.stderr


# -- registering and syncing oci sources: each answer docs/sources.rst documents ------------------


def problem_of(response: Any, status: int, kind: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"].startswith("application/problem+json")
    problem = response.json()
    assert problem["type"] == f"urn:flwd:error:{kind}", problem
    return problem


def sources_cli(server: ServerProcess, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLWD_")}
    env.update({"FLWD_SERVER": server.url, "FLWD_TOKEN": "dev-token"})
    return subprocess.run(
        [sys.executable, "-m", "flwd_cli", ":sources", *args], capture_output=True, text=True, env=env, timeout=60
    )


def test_the_cli_adds_an_oci_source_with_oci_or_an_oci_url(addons, token_registry):
    server = addons["server"]
    ref = f"{token_registry.host}/addons/tools:1"
    done = sources_cli(server, "add", "cli-tools", "--oci", ref)
    assert done.returncode == 0, done.stderr
    assert f"added cli-tools at {addons['digest']}: 2 jobs, 0 problems" in done.stdout
    done = sources_cli(server, "add", "cli-tools-url", "--url", f"oci://{ref}", "--json")
    assert done.returncode == 0, done.stderr
    source = json.loads(done.stdout)["source"]
    assert (source["type"], source["ref"], source["revision"]) == ("oci", ref, addons["digest"])
    wrong = sources_cli(server, "add", "cli-ref", "--oci", ref, "--ref", "main")
    assert wrong.returncode == 2 and "part of --oci REF" in wrong.stderr
    for name in ("cli-tools", "cli-tools-url"):
        assert server.delete(f"/sources/{name}").status_code == 204


def test_post_sources_answers_for_oci_sources(addons, token_registry):
    server = addons["server"]
    ref = f"{token_registry.host}/addons/tools:1"
    added = server.post("/sources", {"type": "oci", "name": "api-tools", "ref": ref})
    assert added.status_code == 201, added.text
    assert added.headers["Location"].endswith("/sources/api-tools")
    source = added.json()["source"]
    assert (source["type"], source["origin"], source["ref"], source["revision"]) == (
        "oci",
        "api",
        ref,
        addons["digest"],
    )
    assert sorted(j["name"] for j in source["jobs"]) == ["addon-boxed", "addon-hello"]
    problem_of(server.post("/sources", {"type": "oci", "name": "api-tools", "ref": ref}), 409, "conflict")

    bad = problem_of(server.post("/sources", {"type": "oci", "name": "bad", "ref": "No Ref"}), 422, "invalid-request")
    assert [e["field"] for e in bad["errors"]] == ["ref"]
    other = {"type": "oci", "name": "foreign", "ref": "registry.example.org/addons/tools:1"}
    foreign = problem_of(server.post("/sources", other), 422, "unsafe-source")
    assert [e["field"] for e in foreign["errors"]] == ["ref"]
    assert "container.allowed_registries" in foreign["errors"][0]["message"]
    missing = {"type": "oci", "name": "nope", "ref": f"{token_registry.host}/addons/tools:nope"}
    nope = problem_of(server.post("/sources", missing), 422, "invalid-request")
    assert "no such tag 'nope'" in nope["detail"] and [e["field"] for e in nope["errors"]] == ["ref"]
    unsigned = {"type": "oci", "name": "unsigned-api", "ref": f"{token_registry.host}/addons/unsigned:1"}
    refused = problem_of(server.post("/sources", unsigned), 422, "invalid-request")
    assert "is not signed" in refused["detail"]
    as_git = problem_of(
        server.post("/sources", {"type": "git", "name": "g", "url": f"oci://{ref}"}), 422, "unsafe-source"
    )
    assert '{"type": "oci"' in as_git["detail"] and "--oci" in as_git["detail"]
    extra = {"type": "oci", "name": "u", "ref": ref, "url": "https://example.org/x.git"}
    assert [e["field"] for e in problem_of(server.post("/sources", extra), 422, "invalid-request")["errors"]] == ["url"]

    names = {s["name"] for s in server.get("/sources").json()["sources"]}
    assert not names & {"bad", "foreign", "nope", "unsigned-api", "g", "u"}
    assert server.delete("/sources/api-tools").status_code == 204


def test_sync_answers_for_oci_sources(addons, registry, signing_keys, tmp_path):
    """200 when the tag stays or moves; 502 when it moves to something refused, to bytes that do not hash, or away."""
    server = addons["server"]
    ref = f"{registry.host}/addons/synced:1"
    key = str(signing_keys["trusted_pem"])
    first = publish(addon_folder(tmp_path / "v1", "busybox", "first"), ref, "--sign-key", key)
    assert first.returncode == 0, first.stderr
    first_digest = first.stdout.strip().split("@")[1]
    assert server.post("/sources", {"type": "oci", "name": "synced", "ref": ref}).status_code == 201
    same = server.post("/sources/synced/sync")
    assert same.status_code == 200 and (same.json()["changed"], same.json()["previous_revision"]) == (
        False,
        first_digest,
    )

    second = publish(addon_folder(tmp_path / "v2", "busybox", "second"), ref, "--sign-key", key)
    assert second.returncode == 0, second.stderr
    second_digest = second.stdout.strip().split("@")[1]
    moved = server.post("/sources/synced/sync").json()
    assert moved["changed"] is True and moved["source"]["revision"] == second_digest

    unsigned = publish(addon_folder(tmp_path / "v3", "busybox", "third"), ref)  # the tag moves to an unsigned add-on
    assert unsigned.returncode == 0, unsigned.stderr
    refused = problem_of(server.post("/sources/synced/sync"), 502, "addon-refused")
    assert "is not signed" in refused["detail"]
    source = server.get("/sources/synced").json()["source"]  # the last good revision keeps serving
    assert source["revision"] == second_digest and len(source["jobs"]) == 2
    assert "is not signed" in source["last_error"]

    unsigned_digest = unsigned.stdout.strip().split("@")[1]
    stored = registry.blob_file(unsigned_digest)  # the manifest under the tag no longer hashes to its digest
    stored.write_bytes(stored.read_bytes().replace(b'"schemaVersion":2', b'"schemaVersion": 2'))
    problem_of(server.post("/sources/synced/sync"), 502, "digest-mismatch")

    deleted = registry.session().delete(f"{registry.url}/v2/addons/synced/manifests/{unsigned_digest}", timeout=10)
    assert deleted.status_code == 202, deleted.text  # the tag is gone with it
    gone = problem_of(server.post("/sources/synced/sync"), 502, "manifest-unknown")
    assert "no such tag '1'" in gone["detail"]

    unreachable = problem_of(server.post("/sources/unreachable/sync"), 502, "registry-error")
    assert "cannot reach registry" in unreachable["detail"]
    problem_of(server.post("/sources/no-such-source/sync"), 404, "source-not-found")
    assert server.get("/sources/synced").json()["source"]["revision"] == second_digest
    assert (server.data_dir / "addons" / "synced").is_dir()
    assert server.delete("/sources/synced").status_code == 204
    assert not (server.data_dir / "addons" / "synced").exists()  # its unpacked digests go with it
