"""Image references are normalised before the allowed-registry check, which compares hosts exactly."""

from __future__ import annotations

import pytest

from flwd_server.containers.images import parse_image_ref, registry_allowed
from flwd_server.errors import Unprocessable

DIGEST = "sha256:" + "a" * 64

# (reference, allowed registries, allowed?)
ALLOW_TABLE = [
    ("registry.example.com/x", ("registry.example.com",), True),
    ("registry.example.com.evil.net/x", ("registry.example.com",), False),
    ("evil.com/registry.example.com/x", ("registry.example.com",), False),
    ("REGISTRY.example.com:443/x", ("registry.example.com",), True),
    ("registry.example.com:5000/x", ("registry.example.com",), False),
    ("registry.example.com/x", ("registry.example.com:5000",), False),
    ("127.0.0.1:5000/tools/x@" + DIGEST, ("127.0.0.1:5000",), True),
    ("localhost/x", ("localhost",), True),
    ("localhost:5000/x", ("localhost",), False),
    ("ubuntu", ("registry.example.com",), False),
    ("ubuntu", ("docker.io",), True),
    ("library/ubuntu:22.04", ("index.docker.io",), True),
    ("index.docker.io/library/ubuntu", ("docker.io",), True),
    ("registry-1.docker.io/library/ubuntu", ("docker.io",), True),
    ("docker.io/ubuntu", ("registry-1.docker.io",), True),
    ("ghcr.io/org/tool@" + DIGEST, ("GHCR.IO",), True),
    ("ghcr.io/org/tool", (), False),
    ("ghcr.io.evil.net/org/tool", ("ghcr.io",), False),
]


@pytest.mark.parametrize(
    ("reference", "allowed", "expected"), ALLOW_TABLE, ids=[f"{r}->{a}" for r, a, _ in ALLOW_TABLE]
)
def test_the_registry_check_compares_normalised_hosts_exactly(reference, allowed, expected):
    assert registry_allowed(parse_image_ref(reference), allowed) is expected


# (reference, registry, repository, tag, digest)
PARSE_TABLE = [
    ("ubuntu", "docker.io", "library/ubuntu", "latest", None),
    ("ubuntu:22.04", "docker.io", "library/ubuntu", "22.04", None),
    ("org/tool", "docker.io", "org/tool", "latest", None),
    ("docker.io/library/ubuntu@" + DIGEST, "docker.io", "library/ubuntu", None, DIGEST),
    ("index.docker.io/ubuntu", "docker.io", "library/ubuntu", "latest", None),
    ("REGISTRY.example.com:443/team/tool:v1", "registry.example.com", "team/tool", "v1", None),
    ("localhost:5000/tool", "localhost:5000", "tool", "latest", None),
    ("127.0.0.1:5000/a/b/c@" + DIGEST, "127.0.0.1:5000", "a/b/c", None, DIGEST),
]


@pytest.mark.parametrize(
    ("reference", "registry", "repository", "tag", "digest"), PARSE_TABLE, ids=[r[0] for r in PARSE_TABLE]
)
def test_references_parse_the_way_docker_reads_them(reference, registry, repository, tag, digest):
    ref = parse_image_ref(reference)
    assert (ref.registry, ref.repository, ref.tag, ref.digest) == (registry, repository, tag, digest)


@pytest.mark.parametrize(
    "reference",
    [
        "",
        "UPPER/case",
        "registry.example.com/x@sha256:short",
        "a b",
        "registry.example.com/x:bad tag",
        "registry.example.com/x@md5:" + "a" * 32,
        "x" * 600,
    ],
)
def test_malformed_references_are_refused(reference):
    with pytest.raises(Unprocessable):
        parse_image_ref(reference)
