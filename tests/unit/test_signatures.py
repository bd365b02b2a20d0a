"""cosign key-based signatures, verified offline: the signature over the exact payload, and its binding."""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa

from flwd_server.containers.images import parse_image_ref
from flwd_server.containers.signatures import (
    SIGNATURE_ANNOTATION,
    SIMPLESIGNING,
    load_private_key,
    load_public_key,
    load_public_keys,
    payload_problem,
    sign_payload,
    signature_valid,
    simple_signing_payload,
    verify_layers,
)
from flwd_server.errors import ConfigError

DATA = Path(__file__).parent / "data" / "cosign"
DIGEST_A = "sha256:" + hashlib.sha256(b"image A").hexdigest()
DIGEST_B = "sha256:" + hashlib.sha256(b"image B").hexdigest()


def public_pem(key) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def payload(
    digest: str, key_name: str = "docker-manifest-digest", kind: str = "cosign container image signature"
) -> bytes:
    return json.dumps(
        {
            "critical": {
                "identity": {"docker-reference": "registry.example.org/tools/x"},
                "image": {key_name: digest},
                "type": kind,
            },
            "optional": None,
        }
    ).encode()


def sig_manifest(*layers: tuple[bytes, bytes]) -> tuple[dict, dict[str, bytes]]:
    """A ``.sig`` manifest with one simple-signing layer per (payload, signature), and the payload blobs."""
    blobs, described = {}, []
    for body, signature in layers:
        digest = "sha256:" + hashlib.sha256(body).hexdigest()
        blobs[digest] = body
        described.append(
            {
                "mediaType": SIMPLESIGNING,
                "size": len(body),
                "digest": digest,
                "annotations": {SIGNATURE_ANNOTATION: base64.b64encode(signature).decode()},
            }
        )
    return {"schemaVersion": 2, "layers": described}, blobs


@pytest.fixture(scope="module")
def keys():
    trusted = ec.generate_private_key(ec.SECP256R1())
    other = ec.generate_private_key(ec.SECP256R1())
    return {"trusted": trusted, "other": other, "trusted_pub": load_public_key(public_pem(trusted), "trusted.pub")}


def ecdsa(key, body: bytes) -> bytes:
    return key.sign(body, ec.ECDSA(hashes.SHA256()))


def test_a_valid_signature_verifies(keys):
    body = payload(DIGEST_A)
    manifest, blobs = sig_manifest((body, ecdsa(keys["trusted"], body)))
    result = verify_layers(manifest, blobs, DIGEST_A, [keys["trusted_pub"]])
    assert result.status == "verified" and "trusted.pub" in result.reason


def test_a_flipped_payload_byte_fails(keys):
    body = payload(DIGEST_A)
    signature = ecdsa(keys["trusted"], body)
    flipped = bytearray(body)
    flipped[10] ^= 0x01
    manifest, blobs = sig_manifest((bytes(flipped), signature))
    assert verify_layers(manifest, blobs, DIGEST_A, [keys["trusted_pub"]]).status == "invalid"


def test_a_valid_sig_of_image_a_retagged_as_b_fails(keys):
    body = payload(DIGEST_A)
    manifest, blobs = sig_manifest((body, ecdsa(keys["trusted"], body)))  # found at sha256-<B>.sig
    result = verify_layers(manifest, blobs, DIGEST_B, [keys["trusted_pub"]])
    assert result.status == "invalid" and f"is for {DIGEST_A}, not {DIGEST_B}" in result.reason


def test_a_signature_made_with_another_key_fails(keys):
    body = payload(DIGEST_A)
    manifest, blobs = sig_manifest((body, ecdsa(keys["other"], body)))
    result = verify_layers(manifest, blobs, DIGEST_A, [keys["trusted_pub"]])
    assert result.status == "invalid" and "none of the configured keys" in result.reason


def test_the_capitalised_legacy_digest_key_is_accepted(keys):
    body = payload(DIGEST_A, key_name="Docker-manifest-digest")
    manifest, blobs = sig_manifest((body, ecdsa(keys["trusted"], body)))
    assert verify_layers(manifest, blobs, DIGEST_A, [keys["trusted_pub"]]).status == "verified"


def test_a_payload_of_another_type_fails(keys):
    body = payload(DIGEST_A, kind="cosign attestation")
    manifest, blobs = sig_manifest((body, ecdsa(keys["trusted"], body)))
    result = verify_layers(manifest, blobs, DIGEST_A, [keys["trusted_pub"]])
    assert result.status == "invalid" and "type" in result.reason


def test_one_good_signature_among_several_is_enough(keys):
    body = payload(DIGEST_A)
    manifest, blobs = sig_manifest((body, ecdsa(keys["other"], body)), (body, ecdsa(keys["trusted"], body)))
    assert verify_layers(manifest, blobs, DIGEST_A, [keys["trusted_pub"]]).status == "verified"


def test_a_sig_manifest_without_signature_layers_is_unsigned(keys):
    assert verify_layers({"layers": []}, {}, DIGEST_A, [keys["trusted_pub"]]).status == "unsigned"


def test_a_signature_that_is_not_base64_fails(keys):
    body = payload(DIGEST_A)
    manifest, blobs = sig_manifest((body, b""))
    manifest["layers"][0]["annotations"][SIGNATURE_ANNOTATION] = "not base64!"
    assert verify_layers(manifest, blobs, DIGEST_A, [keys["trusted_pub"]]).status == "invalid"


@pytest.mark.parametrize("kind", ["rsa", "ed25519"])
def test_rsa_and_ed25519_keys_verify_too(kind):
    private = rsa.generate_private_key(65537, 2048) if kind == "rsa" else ed25519.Ed25519PrivateKey.generate()
    trusted = load_public_key(public_pem(private), f"{kind}.pub")
    body = payload(DIGEST_A)
    signature = private.sign(body, padding.PKCS1v15(), hashes.SHA256()) if kind == "rsa" else private.sign(body)
    manifest, blobs = sig_manifest((body, signature))
    assert verify_layers(manifest, blobs, DIGEST_A, [trusted]).status == "verified"


@pytest.mark.parametrize("name", ["payload", "payload-legacy"])
def test_signatures_made_with_the_openssl_cli_verify_offline(name):
    """Fixtures made by another implementation (openssl; see data/cosign/README), no network."""
    key = load_public_keys([str(DATA / "key.pub")])[0]
    body = (DATA / f"{name}.json").read_bytes()
    signature = base64.b64decode((DATA / f"{name}.sig").read_text())
    digest = (DATA / "digest.txt").read_text().strip()
    assert signature_valid(key.key, signature, body)
    assert payload_problem(body, digest) is None
    assert not signature_valid(key.key, signature, body.replace(b"greeter", b"greetex"))
    assert payload_problem(body, DIGEST_B) is not None


def test_what_flwd_signs_is_what_it_verifies(keys):
    ref = parse_image_ref("registry.example.org/tools/x:1")
    body = simple_signing_payload(ref, DIGEST_A)
    signature = sign_payload(keys["trusted"], body)
    manifest, blobs = sig_manifest((body, signature))
    assert verify_layers(manifest, blobs, DIGEST_A, [keys["trusted_pub"]]).status == "verified"
    assert json.loads(body)["critical"]["identity"]["docker-reference"] == "registry.example.org/tools/x"


def test_keys_that_cannot_be_read_name_the_setting(tmp_path):
    (tmp_path / "bad.pub").write_text("not a key")
    with pytest.raises(ConfigError) as caught:
        load_public_keys([str(tmp_path / "bad.pub")])
    assert caught.value.key == "container.signature_keys" and "bad.pub" in caught.value.detail
    with pytest.raises(ConfigError):
        load_public_keys([str(tmp_path / "missing.pub")])


def test_cosign_encrypted_private_keys_are_refused_with_advice():
    with pytest.raises(ConfigError) as caught:
        load_private_key(
            b"-----BEGIN ENCRYPTED SIGSTORE PRIVATE KEY-----\nxx\n-----END ENCRYPTED SIGSTORE PRIVATE KEY-----\n",
            None,
            "cosign.key",
        )
    assert "cosign" in caught.value.detail
