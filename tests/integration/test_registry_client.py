"""flwd's OCI distribution client and signature lookup against real registries on loopback.

Real: docker-registry (plain and behind the Bearer token flow).  Faked, because
nothing here can be one: a blob store on *another host* that a registry redirects
to (S3/GCS in real life) - two tiny http.servers on 127.0.0.1 and 127.0.0.2.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from flwd_server.containers.images import parse_image_ref
from flwd_server.containers.registry_client import (
    DigestMismatch,
    RegistryClient,
    RegistryError,
    TooLarge,
    sha256_digest,
)
from flwd_server.containers.signatures import SignatureVerifier
from tests.fixtures.containers import cosign_sign, cosign_v3_bundle, payload_for, put_manifest, upload_blob
from tests.fixtures.helpers import free_port

pytestmark = pytest.mark.container


def test_a_manifest_is_hashed_as_received_and_checked_against_the_digest_asked_for(registry, images):
    image = images.push(registry, "client/hashing", "a")
    client = RegistryClient([registry.host])
    ref = parse_image_ref(image)
    manifest = client.require_manifest(ref)
    assert manifest.digest == ref.digest and sha256_digest(manifest.raw) == ref.digest
    by_tag = client.get_manifest(registry.host, "client/hashing", "test")
    assert by_tag is not None and by_tag.digest == ref.digest
    assert client.get_manifest(registry.host, "client/hashing", "no-such-tag") is None


def test_a_tampered_blob_is_refused(registry, images):
    image = images.push(
        registry, "client/tampered", "only-tampered-here"
    )  # blobs are shared per registry: a variant of its own
    client = RegistryClient([registry.host])
    manifest = client.require_manifest(parse_image_ref(image))
    config = manifest.data["config"]["digest"]
    path = registry.blob_file(config)
    path.write_bytes(
        path.read_bytes().replace(b'"os":"linux"', b'"os":"LINUX"').replace(b'"os": "linux"', b'"os": "LINUX"')
    )
    with pytest.raises(DigestMismatch, match="hash to"):
        client.get_blob(registry.host, "client/tampered", config, 1 << 20)


def test_a_tampered_manifest_is_refused_by_digest_and_by_tag(registry, images):
    image = images.push(registry, "client/tampered-manifest", "only-this-manifest")
    digest = image.split("@")[1]
    path = registry.blob_file(digest)
    path.write_bytes(path.read_bytes().replace(b'"schemaVersion": 2', b'"schemaVersion":  2'))
    client = RegistryClient([registry.host])
    with pytest.raises(DigestMismatch, match="hash to"):
        client.get_manifest(registry.host, "client/tampered-manifest", digest)
    with pytest.raises(DigestMismatch, match="claims"):  # by tag: the registry's own digest header disagrees
        client.get_manifest(registry.host, "client/tampered-manifest", "test")


def test_an_oversized_blob_is_aborted(registry):
    session = registry.session()
    big = upload_blob(registry, session, "client/big", b"x" * (2 << 20))
    client = RegistryClient([registry.host])
    with pytest.raises(TooLarge, match="limit of 1048576"):
        client.get_blob(registry.host, "client/big", big["digest"], 1 << 20)
    assert client.get_blob(registry.host, "client/big", big["digest"], 4 << 20) == b"x" * (2 << 20)


def test_the_token_flow_asks_for_the_right_scope_and_takes_access_token_answers(token_registry, images):
    """The token server of this registry answers with ``access_token`` only."""
    image = images.push(token_registry, "private/tools", "a")
    token_registry.token.requests.clear()
    client = RegistryClient([token_registry.host])
    manifest = client.require_manifest(parse_image_ref(image))
    assert manifest.digest == image.split("@")[1]
    asked = token_registry.token.requests
    assert (
        asked[0]["scope"] == "repository:private/tools:pull"
        and asked[0]["service"] == "flwd-test-registry"
        and not asked[0]["basic"]
    )
    assert len(asked) == 1
    client.get_blob(token_registry.host, "private/tools", manifest.data["config"]["digest"], 1 << 20)
    assert len(asked) == 1  # the token is reused within its lifetime


def test_the_token_flow_accepts_a_token_answer_too(token_registry, images):
    image = images.push(token_registry, "private/other", "a")
    token_registry.token.answer_with = "token"
    try:
        assert (
            RegistryClient([token_registry.host]).require_manifest(parse_image_ref(image)).digest == image.split("@")[1]
        )
    finally:
        token_registry.token.answer_with = "access_token"


def test_pushing_without_credentials_is_refused_by_the_registry(token_registry):
    client = RegistryClient([token_registry.host])
    with pytest.raises(RegistryError, match="HTTP 401"):
        client.push_blob(token_registry.host, "private/nope", b"data")


# -- signatures in a real registry -----------------------------------------------


@pytest.fixture(scope="module")
def verifier(registry, signing_keys) -> SignatureVerifier:
    return SignatureVerifier(RegistryClient([registry.host]), (str(signing_keys["trusted_pub"]),), (registry.host,))


def test_a_cosign_signature_in_the_registry_verifies(registry, images, signing_keys, verifier):
    image = images.push(registry, "sigs/good", "a")
    cosign_sign(registry, image, signing_keys["trusted"])
    assert verifier.verify_image(image).status == "verified"


def test_a_valid_signature_of_image_a_stored_as_b_signature_is_refused(registry, images, signing_keys, verifier):
    a = images.push(registry, "sigs/retag", "a")
    b = images.push(registry, "sigs/retag", "b", tag="b")
    cosign_sign(registry, a, signing_keys["trusted"], at_digest=b.split("@")[1])
    result = verifier.verify_image(b)
    assert result.status == "invalid" and f"is for {a.split('@')[1]}" in result.reason


def test_an_unsigned_image_and_a_v3_bundle_are_told_apart(registry, images, verifier):
    unsigned = images.push(registry, "sigs/unsigned", "c")
    assert verifier.verify_image(unsigned).status == "unsigned"
    bundled = images.push(registry, "sigs/bundle", "d")
    cosign_v3_bundle(registry, bundled)
    result = verifier.verify_image(bundled)
    assert result.status == "unsupported" and "unsupported signature format" in result.reason


def test_a_tag_is_resolved_to_its_digest_before_the_signature_is_looked_up(registry, images, signing_keys, verifier):
    image = images.push(registry, "sigs/bytag", "e", tag="v1")
    cosign_sign(registry, image, signing_keys["trusted"])
    assert verifier.verify_image(f"{registry.host}/sigs/bytag:v1").status == "verified"


def test_a_signed_multi_arch_index_verifies_against_the_index_digest(registry, images, signing_keys, verifier):
    """Signatures cover the digest the step names: for a multi-arch image, the index."""
    platform = images.push(registry, "sigs/multi", "a")
    raw, digest = registry.manifest("sigs/multi", platform.split("@")[1])
    index = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            {
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": digest,
                "size": len(raw),
                "platform": {"architecture": "amd64", "os": "linux"},
            }
        ],
    }
    index_digest = put_manifest(
        registry, registry.session(), "sigs/multi", "multi", index, "application/vnd.oci.image.index.v1+json"
    )
    cosign_sign(registry, f"{registry.host}/sigs/multi@{index_digest}", signing_keys["trusted"])
    assert verifier.verify_image(f"{registry.host}/sigs/multi@{index_digest}").status == "verified"
    assert verifier.verify_image(platform).status == "unsigned"  # the platform manifest itself is not signed


def test_a_registry_not_allowed_is_not_asked(other_registry, images, signing_keys):
    image = images.push(other_registry, "sigs/foreign", "a")
    verifier = SignatureVerifier(
        RegistryClient([other_registry.host]), (str(signing_keys["trusted_pub"]),), ("registry.example.org",)
    )
    mark = other_registry.mark()
    assert verifier.verify_image(image).status == "error"
    assert other_registry.requests_since(mark) == []


def test_a_payload_naming_another_digest_is_refused_even_with_the_right_key(registry, images, signing_keys, verifier):
    image = images.push(registry, "sigs/wrongpayload", "f")
    cosign_sign(registry, image, signing_keys["trusted"], payload=payload_for(image, "sha256:" + "0" * 64))
    assert verifier.verify_image(image).status == "invalid"


def test_an_image_that_does_not_exist_is_no_such_image_not_unsigned(registry, images, verifier):
    images.push(registry, "sigs/exists", "a")
    missing = f"{registry.host}/sigs/exists@sha256:{'0' * 64}"
    result = verifier.verify_image(missing)
    assert result.status == "error" and "not signed" not in result.reason
    assert result.reason.startswith(f"no such image {missing}") and "manifest unknown" in result.reason
    by_tag = verifier.verify_image(f"{registry.host}/sigs/exists:nope")
    assert by_tag.status == "error" and "not signed" not in by_tag.reason
    assert f"no such tag 'nope' in {registry.host}/sigs/exists" in by_tag.reason and "manifest unknown" in by_tag.reason


def test_a_tampered_signature_and_another_key_s_signature_get_their_own_messages(
    registry, images, signing_keys, verifier
):
    other_key = images.push(registry, "sigs/other-key", "a")
    cosign_sign(registry, other_key, signing_keys["other"])
    result = verifier.verify_image(other_key)
    assert result.status == "invalid" and "signed with another key" in result.reason
    assert "trusted.pub (sha256:" in result.reason and "tampered" not in result.reason  # names the configured key

    mangled = images.push(registry, "sigs/mangled", "b")
    cosign_sign(registry, mangled, signing_keys["trusted"], signature=b"\x30\x02not-a-signature")
    result = verifier.verify_image(mangled)
    assert result.status == "invalid" and "does not match the image digest" in result.reason
    assert "tampered" in result.reason and "another key" not in result.reason

    moved = images.push(registry, "sigs/moved", "c")  # another image's signature, by another key
    cosign_sign(registry, moved, signing_keys["other"], payload=payload_for(moved, "sha256:" + "1" * 64))
    result = verifier.verify_image(moved)
    assert "does not match the image digest" in result.reason and "another key" not in result.reason


def test_https_to_a_plain_http_registry_says_how_to_allow_it(registry, images):
    image = images.push(registry, "client/plain-http", "a")
    with pytest.raises(RegistryError) as caught:
        RegistryClient([]).require_manifest(parse_image_ref(image))  # not marked insecure: HTTPS is tried
    detail = caught.value.detail
    assert f"registry {registry.host} speaks plain HTTP" in detail
    assert "container.insecure_registries" in detail and "--insecure" in detail and "SSLError" not in detail


# -- redirects to another host ------------------------------------------------------


class _Recorder(BaseHTTPRequestHandler):
    routes: dict[str, Any] = {}
    seen: list[dict[str, Any]] = []

    def log_message(self, *args: Any) -> None:
        pass

    def do_GET(self) -> None:  # noqa: N802
        self.seen.append(
            {
                "host": self.server.server_address[0],
                "path": self.path,
                "authorization": self.headers.get("Authorization"),
                "accept": self.headers.get("Accept", ""),
            }
        )
        status, headers, body = self.routes[(self.server.server_address[0], self.path.split("?")[0])](self)
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def test_manifests_are_asked_for_with_every_manifest_and_index_type():
    port = free_port()
    body = json.dumps(
        {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": []}
    ).encode()
    _Recorder.routes = {
        ("127.0.0.1", "/v2/r/x/manifests/1"): lambda h: (
            200,
            {"Content-Type": "application/vnd.oci.image.index.v1+json"},
            body,
        )
    }
    _Recorder.seen = []
    server = ThreadingHTTPServer(("127.0.0.1", port), _Recorder)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        manifest = RegistryClient([f"127.0.0.1:{port}"]).get_manifest(f"127.0.0.1:{port}", "r/x", "1")
    finally:
        server.shutdown()
        server.server_close()
    assert manifest is not None and manifest.is_index and manifest.digest == sha256_digest(body)
    accept = _Recorder.seen[0]["accept"]
    for media_type in (
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.docker.distribution.manifest.v2+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
    ):
        assert media_type in accept


def test_a_redirect_to_another_host_gets_no_authorization_header():
    blob = b"stored elsewhere"
    digest = sha256_digest(blob)
    storage_port = free_port("127.0.0.2")
    registry_port = free_port()
    token_body = json.dumps({"access_token": "secret-token"}).encode()

    def blob_route(handler: BaseHTTPRequestHandler) -> tuple[int, dict[str, str], bytes]:
        if handler.headers.get("Authorization") != "Bearer secret-token":
            return (
                401,
                {
                    "WWW-Authenticate": f'Bearer realm="http://127.0.0.1:{registry_port}/token",service="fake",scope="repository:r/x:pull"'
                },
                b"",
            )
        return 307, {"Location": f"http://127.0.0.2:{storage_port}/bucket/{digest}?signature=s3"}, b""

    _Recorder.routes = {
        ("127.0.0.1", "/token"): lambda h: (200, {"Content-Type": "application/json"}, token_body),
        ("127.0.0.1", f"/v2/r/x/blobs/{digest}"): blob_route,
        ("127.0.0.2", f"/bucket/{digest}"): lambda h: (200, {}, blob),
    }
    _Recorder.seen = []
    servers = [
        ThreadingHTTPServer(("127.0.0.1", registry_port), _Recorder),
        ThreadingHTTPServer(("127.0.0.2", storage_port), _Recorder),
    ]
    threads = [threading.Thread(target=s.serve_forever, daemon=True) for s in servers]
    for thread in threads:
        thread.start()
    try:
        client = RegistryClient([f"127.0.0.1:{registry_port}"])
        assert client.get_blob(f"127.0.0.1:{registry_port}", "r/x", digest, 1024) == blob
    finally:
        for server in servers:
            server.shutdown()
            server.server_close()
    to_registry = [s for s in _Recorder.seen if s["host"] == "127.0.0.1" and s["path"].startswith("/v2/")]
    to_storage = [s for s in _Recorder.seen if s["host"] == "127.0.0.2"]
    assert to_registry[-1]["authorization"] == "Bearer secret-token"
    assert to_storage and all(s["authorization"] is None for s in to_storage)
    token_requests = [s for s in _Recorder.seen if s["path"].startswith("/token")]
    assert "scope=repository%3Ar%2Fx%3Apull" in token_requests[0]["path"]
