"""Container steps on a real podman (Docker-compatible socket) pulling from a real registry on loopback.

One server for the module, under ``secure`` with ``verify_signatures: enforce``
and the trusted key configured; images are pushed and signed per test purpose.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from typing import Any

import pytest
import yaml

from tests.fixtures.containers import cosign_sign, cosign_v3_bundle, write_private_key
from tests.fixtures.helpers import read_stream, wait_until
from tests.fixtures.server import ServerProcess

pytestmark = pytest.mark.container

# The container waits (at most 30 s) for SIGUSR1 from the test: no exec session, whose conmon would linger.
ON_GO = "go=; trap 'go=1' USR1"
WAIT_FOR_GO = 'i=0; while [ -z "$go" ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); done'


def job(name: str, image: str, command: list[str], **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "steps": [
            {
                "name": "box",
                "image": image,
                "command": command,
                **{k: v for k, v in extra.items() if k in ("env", "workdir")},
            }
        ],
        **{k: v for k, v in extra.items() if k not in ("env", "workdir")},
    }


@pytest.fixture(scope="module")
def box(tmp_path_factory, registry, other_registry, podman, images, signing_keys):
    signed = images.push(registry, "steps/signed", "a")
    cosign_sign(registry, signed, signing_keys["trusted"])
    other_key = images.push(registry, "steps/other-key", "b")
    cosign_sign(registry, other_key, signing_keys["other"])
    unsigned = images.push(registry, "steps/unsigned", "c")
    foreign = images.push(other_registry, "steps/foreign", "d")
    bundled = images.push(registry, "steps/v3-bundle", "e")
    cosign_v3_bundle(registry, bundled)
    root = tmp_path_factory.mktemp("container-jobs")
    jobs = {
        "live": job(
            "live",
            signed,
            [
                "sh",
                "-c",
                f"{ON_GO}; echo first; {WAIT_FOR_GO}; printf par; sleep 0.2; printf 'tial\\n'; printf 'err-' >&2; sleep 0.2; echo line >&2; exit 3",
            ],
        ),
        "greet": {
            **job("greet", signed, ["echo", "Hello,", "{{ args.name }}"]),
            "args": {"name": {"type": "string", "required": True}},
        },
        "sleeper": job("sleeper", signed, ["sh", "-c", "echo started; sleep 300"]),
        "short-timeout": job("short-timeout", signed, ["sh", "-c", "echo started; sleep 300"], timeout=2),
        "quiet": job("quiet", signed, ["sh", "-c", "sleep 4; echo after-quiet"]),
        "instant": job("instant", signed, ["sh", "-c", "echo out-line; echo err-line >&2"]),
        "leaves-file": job(
            "leaves-file", signed, ["sh", "-c", 'echo "from the box" > "$FLWD_ARTIFACTS/box.txt"; ls /flwd']
        ),
        "long-line": job("long-line", signed, ["sh", "-c", "head -c 70000 /dev/zero | tr '\\0' x; echo; echo after"]),
        "capped": {
            "name": "capped",  # 800 bytes on the host, then 800 in a container: one run's output
            "steps": [
                {"name": "host", "run": "for i in $(seq 100); do echo hhhhhhh; done"},
                {"name": "box", "image": signed, "command": ["sh", "-c", "for i in $(seq 100); do echo ccccccc; done"]},
            ],
        },
        "echo": {**job("echo", signed, ["echo", "{{ args.n }}"]), "args": {"n": {"type": "integer", "required": True}}},
        "inside": job(
            "inside",
            signed,
            ["sh", "-c", 'echo "$GREETING $(pwd)"; ls /sys/class/net'],
            env={"GREETING": "hi"},
            workdir="/work",
        ),
        "outputs": {
            "name": "outputs",  # a host step's output reaches the container; the container's reaches the run
            "outputs": {"answer": {"type": "integer"}},
            "steps": [
                {"name": "host", "run": 'echo from_host=hello >> "$FLWD_OUTPUT"'},
                {
                    "name": "box",
                    "image": signed,
                    "command": [
                        "sh",
                        "-c",
                        'echo "at $FLWD_OUTPUT got $FLWD_OUTPUT_FROM_HOST"; ls /flwd; '
                        'echo answer=42 >> "$FLWD_OUTPUT"; printf "lines<<E\\na\\nb\\nE\\n" >> "$FLWD_OUTPUT"',
                    ],
                },
            ],
        },
        "other-key": job("other-key", other_key, ["echo", "must not run"]),
        "unsigned": job("unsigned", unsigned, ["echo", "must not run"]),
        "foreign": job("foreign", foreign, ["echo", "must not run"]),
        "v3-bundle": job("v3-bundle", bundled, ["echo", "must not run"]),
        "missing-tag": job("missing-tag", f"{registry.host}/steps/nope:1", ["echo", "must not run"]),
        "missing-digest": job("missing-digest", f"{registry.host}/steps/nope@sha256:{'0' * 64}", ["echo", "no"]),
    }
    (root / "src" / "jobs").mkdir(parents=True)
    for name, data in jobs.items():
        (root / "src" / "jobs" / f"{name}.yaml").write_text(yaml.safe_dump(data))
    config = {
        "default_profile": "secure",
        "sse": {"heartbeat": 1.0},
        "container": {
            "runtime": "podman",
            "socket": podman.url,
            "verify_signatures": "enforce",
            "signature_keys": [str(signing_keys["trusted_pub"])],
            "allowed_registries": [registry.host],
            "insecure_registries": [registry.host],
            "api_timeout": 2,  # a quiet container must outlive it: streams and waits have no timeout
        },
        "sources": [{"type": "local", "name": "boxes", "path": str(root / "src")}],
    }
    server = ServerProcess(root / "server", config, dev=True, env=None).start()
    yield {
        "server": server,
        "config": config,
        "signed": signed,
        "unsigned": unsigned,
        "foreign": foreign,
        "other_key": other_key,
        "bundled": bundled,
        "jobs_dir": root / "src" / "jobs",
    }
    server.stop(timeout=30)


def outputs(events: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(e["data"]["data"]["stream"], e["data"]["data"]["line"]) for e in events if e.get("event") == "step.output"]


def finished_step(events: list[dict[str, Any]]) -> dict[str, Any]:
    return next(e["data"]["data"] for e in events if e.get("event") == "step.finished")


def test_container_step_streams_output_live_and_reports_its_exit_code(box, podman):
    server = box["server"]
    run = server.submit("live")
    url = f"{server.url}/runs/{run['id']}/events"
    seen = read_stream(url, server.headers(), until=lambda e: e["event"] == "step.output", timeout=60)
    assert outputs(seen) == [("stdout", "first")]
    # The first line arrived while the container still runs (it waits for /tmp/go).
    running = podman.containers_of(run["id"])
    assert [c["State"] for c in running] == ["running"]
    inspected = podman.client().api.inspect_container(running[0]["Id"])
    assert inspected["Image"] == podman.client().api.inspect_image(box["signed"])["Id"]  # run by the verified image ID
    assert inspected["HostConfig"]["Privileged"] is False
    assert inspected["HostConfig"]["NetworkMode"] == "none"
    podman.client().api.kill(running[0]["Id"], signal="SIGUSR1")

    finished = server.wait_finished(run["id"], timeout=60)
    assert finished["status"] == "failed" and finished["exit_code"] == 3
    events = server.events(run["id"])
    assert outputs(events) == [("stdout", "first"), ("stdout", "partial"), ("stderr", "err-line")]
    step = finished_step(events)
    assert step["exit_code"] == 3 and step["status"] == "failed"
    wait_until(lambda: podman.containers_of(run["id"]) == [], 10, 0.1, "the finished container to be removed")


def test_placeholders_fill_whole_argv_elements(box):
    server = box["server"]
    name = "Alice; echo pwned $(id) `id`"
    run = server.submit("greet", {"name": name})
    assert server.wait_finished(run["id"], timeout=60)["status"] == "succeeded"
    assert outputs(server.events(run["id"])) == [("stdout", f"Hello, {name}")]


def test_a_long_line_is_cut_with_a_marker(box):
    server = box["server"]
    run = server.submit("long-line")
    assert server.wait_finished(run["id"], timeout=60)["status"] == "succeeded"
    lines = outputs(server.events(run["id"]))
    assert lines[0][1] == "x" * 65536 + " [flwd: line truncated]" and lines[1:] == [("stdout", "after")]


def test_a_container_step_shares_the_run_s_output_cap_with_host_steps(box, tmp_path):
    """limits.max_output_bytes is the run's, whichever executor prints: the container step stores only
    what the host step left of it, whole lines only, then one marker and nothing more."""
    server = ServerProcess(
        tmp_path, {**box["config"], "limits": {"max_output_bytes": 1024}}, dev=True, env=None
    ).start()
    try:
        run = server.submit("capped")
        assert server.wait_finished(run["id"], timeout=60)["status"] == "succeeded"
        lines = [e["data"]["data"] for e in server.events(run["id"]) if e["event"] == "step.output"]
    finally:
        server.stop(timeout=30)
    marker = "[flwd: output limit of 1024 bytes reached; the rest is not stored]"
    assert [o["line"] for o in lines].count(marker) == 1 and lines[-1]["line"] == marker
    stored = lines[:-1]
    assert [o["step"] for o in stored].count("host") == 100
    assert [o["line"] for o in stored if o["step"] == "box"] == ["ccccccc"] * 28  # 224 of 1024 bytes were left
    assert sum(len(o["line"]) + 1 for o in stored) == 1024


def test_ten_runs_at_once_all_finish_and_leave_no_container(box, podman):
    server = box["server"]
    runs = [server.submit("echo", {"n": n}) for n in range(10)]
    for n, run in enumerate(runs):
        assert server.wait_finished(run["id"], timeout=120)["status"] == "succeeded"
        assert outputs(server.events(run["id"])) == [("stdout", str(n))]
    wait_until(lambda: all(podman.containers_of(r["id"]) == [] for r in runs), 10, 0.1, "every container to be removed")


def test_env_workdir_and_no_network_unless_required(box):
    server = box["server"]
    run = server.submit("inside")
    assert server.wait_finished(run["id"], timeout=60)["status"] == "succeeded"
    assert outputs(server.events(run["id"])) == [("stdout", "hi /work"), ("stdout", "lo")]


def test_a_container_step_gets_earlier_outputs_and_sets_its_own_through_the_mounted_file(box):
    server = box["server"]
    run = server.submit("outputs")
    done = server.wait_finished(run["id"], timeout=60)
    lines = [line for _, line in outputs(server.events(run["id"]))]
    assert done["status"] == "succeeded", (done, lines)
    assert "at /flwd/output got hello" in lines
    assert lines[lines.index("at /flwd/output got hello") + 1 :] == ["artifacts", "output"]  # only these of the host
    assert done["outputs"] == {"from_host": "hello", "answer": 42, "lines": "a\nb"}


def test_cancel_mid_step_removes_the_container_within_seconds(box, podman):
    server = box["server"]
    run = server.submit("sleeper")
    read_stream(
        f"{server.url}/runs/{run['id']}/events",
        server.headers(),
        until=lambda e: e["event"] == "step.output",
        timeout=60,
    )
    assert len(podman.containers_of(run["id"])) == 1
    cancelled_at = time.monotonic()
    assert server.post(f"/runs/{run['id']}/cancel").status_code in (200, 202)
    assert server.wait_finished(run["id"], timeout=15)["status"] == "cancelled"
    wait_until(lambda: podman.containers_of(run["id"]) == [], 10, 0.1, "the cancelled container to be gone")
    assert time.monotonic() - cancelled_at < 10


def test_timeout_kills_and_removes_the_container(box, podman):
    server = box["server"]
    run = server.submit("short-timeout")
    finished = server.wait_finished(run["id"], timeout=30)
    assert finished["status"] == "timed_out"
    wait_until(lambda: podman.containers_of(run["id"]) == [], 10, 0.1, "the timed-out container to be gone")


def test_a_quiet_container_outlives_the_api_timeout(box):
    server = box["server"]
    run = server.submit("quiet")
    finished = server.wait_finished(run["id"], timeout=60)
    assert finished["status"] == "succeeded", server.logs()[-3000:]
    assert outputs(server.events(run["id"])) == [("stdout", "after-quiet")]


def test_an_instantly_exiting_container_loses_no_output(box):
    server = box["server"]
    run = server.submit("instant")
    assert server.wait_finished(run["id"], timeout=60)["status"] == "succeeded"
    assert sorted(outputs(server.events(run["id"]))) == [("stderr", "err-line"), ("stdout", "out-line")]


def test_a_container_step_leaves_an_artifact_in_its_mounted_folder(box):
    server = box["server"]
    run = server.submit("leaves-file")
    assert server.wait_finished(run["id"], timeout=60)["status"] == "succeeded"
    assert outputs(server.events(run["id"])) == [
        ("stdout", "artifacts"),
        ("stdout", "output"),
    ]  # the only host paths it sees
    listed = server.get(f"/runs/{run['id']}/artifacts").json()["artifacts"]
    assert [(a["path"], a["size"]) for a in listed] == [("box.txt", 13)]
    assert server.get(f"/runs/{run['id']}/artifacts/box.txt").content == b"from the box\n"


def _rejected(server: ServerProcess, name: str) -> dict[str, Any]:
    plan = server.post("/plans", {"job": name}).json()["plan"]
    assert plan["runnable"] is False
    response = server.post("/runs", {"job": name})
    assert response.status_code == 202, response.text
    run = response.json()["run"]
    assert run["status"] == "rejected"
    return {"plan": plan, "run": run, "decisions": {d["check"]: d for d in plan["decisions"]}}


def test_an_image_from_a_registry_not_allowed_is_rejected_before_anything_is_pulled(box, podman, other_registry):
    mark = other_registry.mark()
    result = _rejected(box["server"], "foreign")
    decision = result["decisions"]["image-registry"]
    assert decision["outcome"] == "deny" and other_registry.host in decision["reason"]
    assert "not in container.allowed_registries" in result["run"]["reason"]
    assert other_registry.requests_since(mark) == []  # not even its signatures were looked up
    assert not podman.has_image(box["foreign"])


def test_an_unsigned_image_is_rejected_under_enforce_before_anything_is_pulled(box, podman, registry):
    mark = registry.mark()
    result = _rejected(box["server"], "unsigned")
    decision = result["decisions"]["image-signature"]
    assert decision["outcome"] == "deny" and "is not signed" in decision["reason"]
    digest = box["unsigned"].split("@")[1]
    asked = registry.requests_since(mark)
    assert asked and all(
        path.endswith(".sig")
        or "/referrers/" in path
        or path.endswith(digest.replace(":", "-"))
        or (method == "HEAD" and path.endswith(f"/manifests/{digest}"))  # is there such an image at all?
        for method, path in asked
    ), asked
    assert not any("/blobs/" in path for _, path in asked)
    assert not podman.has_image(box["unsigned"])


def test_a_signature_made_with_another_key_is_refused(box, podman):
    result = _rejected(box["server"], "other-key")
    assert "none of the configured keys" in result["decisions"]["image-signature"]["reason"]
    assert not podman.has_image(box["other_key"])


def test_a_cosign_v3_bundle_is_an_unsupported_format_not_unsigned(box):
    result = _rejected(box["server"], "v3-bundle")
    reason = result["decisions"]["image-signature"]["reason"]
    assert "unsupported signature format" in reason and "not signed" not in reason


def test_the_valid_signature_runs_and_events_show_the_decision(box):
    server = box["server"]
    run = server.submit("greet", {"name": "Bob"})
    assert server.wait_finished(run["id"], timeout=60)["status"] == "succeeded"
    events = server.events(run["id"])
    signature = [
        e["data"]["data"]
        for e in events
        if e.get("event") == "policy.decision" and e["data"]["data"]["check"] == "image-signature"
    ]
    assert signature and signature[0]["outcome"] == "allow" and "trusted.pub" in signature[0]["reason"]
    assert [e["event"] for e in events if e["event"].startswith("step.")] == [
        "step.started",
        "step.output",
        "step.finished",
    ]


def test_containers_of_a_killed_worker_are_swept_when_it_is_replaced(box, podman, start_server):
    server = start_server(box["config"])
    run = server.submit("sleeper")
    read_stream(
        f"{server.url}/runs/{run['id']}/events",
        server.headers(),
        until=lambda e: e["event"] == "step.output",
        timeout=60,
    )
    assert [c["State"] for c in podman.containers_of(run["id"])] == ["running"]
    (worker,) = server.worker_pids()
    os.kill(worker, signal.SIGKILL)  # gunicorn starts a new worker; its start-up sweep finds the orphan
    wait_until(lambda: podman.containers_of(run["id"]) == [], 20, 0.1, "the orphaned container to be swept")
    assert server.wait_finished(run["id"], timeout=20)["status"] == "lost"


def test_a_failed_pull_ends_the_run_with_the_image_and_the_registry_s_answer(box, registry):
    """Under a permissive run (the signature check only warns) the pull itself fails: the run's reason says why."""
    server = box["server"]
    for name, image in (
        ("missing-tag", f"{registry.host}/steps/nope:1"),  # resolved by flwd's registry client
        ("missing-digest", f"{registry.host}/steps/nope@sha256:{'0' * 64}"),  # pulled by the engine
    ):
        run = server.submit(name, profile="permissive")
        finished = server.wait_finished(run["id"], timeout=60)
        assert finished["status"] == "failed", finished
        assert finished["reason"].startswith(f"step 'box': cannot pull image {image}: "), finished["reason"]
        assert "manifest unknown" in finished["reason"] and "exited with" not in finished["reason"]


def sign(image: str, key: str, *extra: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLWD_")}
    return subprocess.run(
        [sys.executable, "-m", "flwd_cli", ":sign", image, "--key", key, *extra],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )


def test_an_image_signed_with_flwd_sign_runs_under_enforce(box, registry, images, signing_keys):
    image = images.push(registry, "steps/flwd-signed", "sign-ok", tag="v1")
    done = sign(f"{registry.host}/steps/flwd-signed:v1", str(signing_keys["trusted_pem"]), "--insecure")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == image  # the tag was resolved once and that digest signed
    digest = image.split("@")[1]
    tag = digest.replace(":", "-") + ".sig"
    assert f"signed: {registry.host}/steps/flwd-signed:{tag}" in done.stderr
    raw, _ = registry.manifest("steps/flwd-signed", tag)  # cosign's layout: a simple-signing layer, annotated
    (layer,) = yaml.safe_load(raw)["layers"]
    assert layer["mediaType"] == "application/vnd.dev.cosign.simplesigning.v1+json"
    assert set(layer["annotations"]) == {"dev.cosignproject.cosign/signature"}

    (box["jobs_dir"] / "flwd-signed.yaml").write_text(yaml.safe_dump(job("flwd-signed", image, ["echo", "ran"])))
    server = box["server"]
    run = server.submit("flwd-signed")
    assert server.wait_finished(run["id"], timeout=60)["status"] == "succeeded"
    assert outputs(server.events(run["id"])) == [("stdout", "ran")]
    decision = next(
        e["data"]["data"]
        for e in server.events(run["id"])
        if e["event"] == "policy.decision" and e["data"]["data"]["check"] == "image-signature"
    )
    assert decision["outcome"] == "allow" and "trusted.pub" in decision["reason"]


def test_an_image_signed_with_flwd_sign_and_another_key_is_refused_naming_the_configured_key(
    box, registry, images, signing_keys, tmp_path, podman
):
    image = images.push(registry, "steps/flwd-other", "sign-other")
    done = sign(image, str(write_private_key(signing_keys["other"], tmp_path / "other.pem")), "--insecure")
    assert done.returncode == 0, done.stderr
    (box["jobs_dir"] / "flwd-other.yaml").write_text(yaml.safe_dump(job("flwd-other", image, ["echo", "no"])))
    reason = _rejected(box["server"], "flwd-other")["decisions"]["image-signature"]["reason"]
    assert "signed with another key" in reason and "container.signature_keys: trusted.pub (sha256:" in reason
    assert not podman.has_image(image)


def test_flwd_sign_says_how_to_reach_a_plain_http_registry(registry, images, signing_keys):
    image = images.push(registry, "steps/flwd-plain", "sign-ok")
    done = sign(image, str(signing_keys["trusted_pem"]))  # no --insecure: HTTPS is tried
    assert done.returncode != 0 and "Traceback" not in done.stderr
    assert "speaks plain HTTP" in done.stderr and "--insecure" in done.stderr
    assert "container.insecure_registries" in done.stderr


def test_flwd_sign_refuses_an_image_that_is_not_there(registry, signing_keys):
    missing = f"{registry.host}/steps/flwd-missing@sha256:{'0' * 64}"
    done = sign(missing, str(signing_keys["trusted_pem"]), "--insecure")
    assert done.returncode != 0 and f"no such image {missing}" in done.stderr, done.stderr
    tag = f"sha256-{'0' * 64}.sig"
    assert (
        registry.session().get(f"{registry.url}/v2/steps/flwd-missing/manifests/{tag}", timeout=10).status_code == 404
    )
