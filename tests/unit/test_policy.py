"""Each policy check under each profile (pure functions, no server)."""

from __future__ import annotations

import pytest

from flwd_server.config import load_settings
from flwd_server.jobs.files import parse_job
from flwd_server.models import Profile, Verdict
from flwd_server.policy import PolicyContext, SignatureResult, downgrade_decision, evaluate

DIGEST = "@sha256:" + "a" * 64
SETTINGS = load_settings(None, {"container.allowed_registries": ["registry.example.org"]}, environ={})


def job(text: str):
    return parse_job(text, "t", "j.yaml")


def verdicts(
    job_text: str, profile: Profile, *, runtime: str | None = "podman", signature=None, kind="local", spec=None
):
    ctx = PolicyContext(
        job=job(job_text),
        profile=profile,
        settings=SETTINGS,
        source_kind=kind,
        source_spec=spec or {},
        runtime=runtime,
        runtime_problem=None if runtime else "no container runtime is available",
        verify_signature=signature or (lambda image: SignatureResult("verified", "signed by key k1")),
    )
    return {d.check: d.verdict for d in evaluate(ctx)}


def container(extra: str = "", image: str = f"registry.example.org/t/a{DIGEST}", requires: str = "[]") -> str:
    return f"name: c\nrequires: {requires}\nsteps:\n  - image: {image}\n    command: [x]\n{extra}"


CASES = [
    # check, job, expected under secure, under permissive
    ("host-env", "name: h\nrequires: [host-env]\nsteps:\n  - run: 'true'\n", "deny", "warn"),
    ("image-registry", container(image=f"evil.example.com/t/a{DIGEST}"), "deny", "warn"),
    ("image-registry", container(image=f"registry.example.org.evil.net/t/a{DIGEST}"), "deny", "warn"),
    ("image-digest", container(image="registry.example.org/t/a:latest"), "deny", "warn"),
    ("privileged", container("    privileged: true\n"), "deny", "warn"),
    ("host-network", container("    network: host\n", requires="[network]"), "deny", "warn"),
    ("container-network", container("    network: default\n"), "deny", "warn"),
]


@pytest.mark.parametrize(
    ("check", "text", "secure", "permissive"), CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)]
)
def test_a_failing_check_denies_under_secure_and_warns_under_permissive(check, text, secure, permissive):
    assert verdicts(text, Profile.SECURE)[check] == Verdict(secure)
    assert verdicts(text, Profile.PERMISSIVE)[check] == Verdict(permissive)
    disabled = verdicts(text, Profile.DISABLED)
    assert check not in disabled and disabled == {"profile": Verdict.WARN}


def test_the_privileged_warning_says_the_container_runs_unprivileged_anyway():
    ctx = PolicyContext(
        job=job(container("    privileged: true\n")),
        profile=Profile.PERMISSIVE,
        settings=SETTINGS,
        runtime="podman",
        verify_signature=lambda image: SignatureResult("verified", "signed by key k1"),
    )
    (decision,) = [d for d in evaluate(ctx) if d.check == "privileged"]
    assert decision.verdict is Verdict.WARN and "runs unprivileged anyway" in decision.reason


def test_passing_checks_allow_and_say_why():
    good = verdicts(container(requires="[network]", extra="    network: default\n"), Profile.SECURE)
    assert set(good.values()) == {Verdict.ALLOW}
    assert {
        "image-registry",
        "image-digest",
        "image-signature",
        "privileged",
        "host-network",
        "container-network",
        "container-runtime",
    } <= set(good)


def test_a_missing_runtime_denies_under_every_profile():
    for profile in Profile:
        assert verdicts(container(), profile, runtime=None)["container-runtime"] is Verdict.DENY


@pytest.mark.parametrize(
    ("mode", "result", "secure", "permissive"),
    [
        ("enforce", "unsigned", "deny", "warn"),
        ("enforce", "invalid", "deny", "warn"),
        ("permissive", "unsigned", "warn", "warn"),
        ("disabled", "unsigned", "allow", "allow"),
        ("enforce", "verified", "allow", "allow"),
    ],
)
def test_signatures_follow_verify_signatures(monkeypatch, mode, result, secure, permissive):
    settings = load_settings(
        None,
        {"container.allowed_registries": ["registry.example.org"], "container.verify_signatures": mode},
        environ={},
    )
    monkeypatch.setattr("tests.unit.test_policy.SETTINGS", settings)
    signature = lambda image: SignatureResult(result, f"the image is {result}")  # noqa: E731
    assert verdicts(container(), Profile.SECURE, signature=signature)["image-signature"] == Verdict(secure)
    assert verdicts(container(), Profile.PERMISSIVE, signature=signature)["image-signature"] == Verdict(permissive)


@pytest.mark.parametrize(("ref", "pinned"), [("main", False), ("v1.2.0", False), ("a" * 40, True)])
def test_git_sources_following_a_branch_warn_even_under_secure(ref, pinned):
    text = "name: g\nsteps:\n  - run: 'true'\n"
    got = verdicts(text, Profile.SECURE, kind="git", spec={"ref": ref})["git-ref-pinned"]
    assert got is (Verdict.ALLOW if pinned else Verdict.WARN)


def test_addons_following_a_tag_warn():
    text = "name: o\nsteps:\n  - run: 'true'\n"
    assert verdicts(text, Profile.SECURE, kind="oci", spec={"ref": "r.example/x:1"})["addon-pinned"] is Verdict.WARN
    assert (
        verdicts(text, Profile.SECURE, kind="oci", spec={"ref": f"r.example/x{DIGEST}"})["addon-pinned"]
        is Verdict.ALLOW
    )


def test_downgrades_need_the_scope_and_an_allowed_profile():
    assert downgrade_decision(Profile.SECURE, Profile.PERMISSIVE, ("permissive",), True, "a").verdict is Verdict.WARN
    assert downgrade_decision(Profile.SECURE, Profile.PERMISSIVE, ("permissive",), False, "a").verdict is Verdict.DENY
    refused = downgrade_decision(Profile.SECURE, Profile.DISABLED, ("permissive",), True, "a")
    assert refused.verdict is Verdict.DENY and "allowed_downgrades" in refused.reason
