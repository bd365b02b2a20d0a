"""Offline verification of cosign key-based signatures (the ``.sig`` tag scheme).

For an artifact ``registry/repo@sha256:abc…`` cosign stores its signatures as an
OCI manifest at the tag ``sha256-abc….sig`` in the same repository.  Each layer
of that manifest is a *simple signing* payload (media type
``application/vnd.dev.cosign.simplesigning.v1+json``) whose annotation
``dev.cosignproject.cosign/signature`` holds the base64 signature over the
payload's exact bytes.  A signature counts only if

1. it verifies with one of the configured public keys (ECDSA P-256/SHA-256 DER
   as cosign makes by default; RSA PKCS#1 v1.5 and Ed25519 keys work too), and
2. the payload binds it to *this* artifact: ``critical.type`` is
   ``cosign container image signature`` and
   ``critical.image.docker-manifest-digest`` (older cosign wrote
   ``Docker-manifest-digest``) equals the digest being checked.

No transparency log or certificate authority is consulted: keys come from
``container.signature_keys``.  Cosign v3's default (a Sigstore bundle stored as
an OCI 1.1 referrer instead of the ``.sig`` tag) is reported as an unsupported
signature format, never as "unsigned".
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from ..errors import ConfigError, FlwdError
from ..policy import SignatureResult
from .images import ImageRef, parse_image_ref, registry_allowed
from .registry_client import OCI_MANIFEST, ManifestUnknown, RegistryClient, RegistryError

log = logging.getLogger("flwd.signatures")

SIMPLESIGNING = "application/vnd.dev.cosign.simplesigning.v1+json"
SIGNATURE_ANNOTATION = "dev.cosignproject.cosign/signature"
SIGNATURE_TYPE = "cosign container image signature"
BUNDLE_TYPE_PREFIX = "application/vnd.dev.sigstore.bundle"
MAX_PAYLOAD_BYTES = 256 * 1024
MAX_SIGNATURE_LAYERS = 32
CACHE_SECONDS = 60.0

PublicKey = ec.EllipticCurvePublicKey | rsa.RSAPublicKey | ed25519.Ed25519PublicKey


@dataclass(frozen=True)
class TrustedKey:
    name: str  # the file it came from, shown in reasons
    key: PublicKey
    fingerprint: str


def load_public_key(pem: bytes, name: str) -> TrustedKey:
    try:
        key = serialization.load_pem_public_key(pem)
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise ConfigError("container.signature_keys", f"{name}: not a PEM public key ({exc})") from None
    if not isinstance(key, (ec.EllipticCurvePublicKey, rsa.RSAPublicKey, ed25519.Ed25519PublicKey)):
        raise ConfigError("container.signature_keys", f"{name}: unsupported key type {type(key).__name__}")
    der = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return TrustedKey(name, key, "sha256:" + hashlib.sha256(der).hexdigest()[:16])


def load_public_keys(paths: tuple[str, ...] | list[str]) -> list[TrustedKey]:
    keys = []
    for path in paths:
        try:
            pem = Path(path).expanduser().read_bytes()
        except OSError as exc:
            raise ConfigError("container.signature_keys", f"cannot read {path}: {exc.strerror}") from None
        keys.append(load_public_key(pem, Path(path).name))
    return keys


def signature_valid(key: PublicKey, signature: bytes, payload: bytes) -> bool:
    """Whether ``signature`` over the exact ``payload`` bytes verifies with ``key``."""
    try:
        if isinstance(key, ec.EllipticCurvePublicKey):
            key.verify(signature, payload, ec.ECDSA(hashes.SHA256()))  # ASN.1 DER, not JWS r||s
        elif isinstance(key, rsa.RSAPublicKey):
            key.verify(signature, payload, padding.PKCS1v15(), hashes.SHA256())
        else:
            key.verify(signature, payload)
    except (InvalidSignature, ValueError):
        return False
    return True


def signed_digest(payload: bytes) -> tuple[str | None, str | None]:
    """``(digest the payload names, None)``, or ``(None, why it is no cosign payload)``."""
    try:
        data = json.loads(payload)
    except ValueError:
        return None, "the signed payload is not JSON"
    critical = data.get("critical") if isinstance(data, dict) else None
    if not isinstance(critical, dict):
        return None, "the signed payload has no critical section"
    if critical.get("type") != SIGNATURE_TYPE:
        return None, f"the signed payload's type is {critical.get('type')!r}, not {SIGNATURE_TYPE!r}"
    image = critical.get("image")
    if not isinstance(image, dict):
        return None, "the signed payload names no image"
    # cosign compares case-insensitively (Go's JSON); older versions wrote Docker-manifest-digest.
    signed = next((v for k, v in image.items() if k.lower() == "docker-manifest-digest"), None)
    return (signed, None) if isinstance(signed, str) else (None, "the signed payload names no image digest")


def payload_problem(payload: bytes, digest: str) -> str | None:
    """Why a simple-signing payload does not bind to ``digest`` (None when it does)."""
    signed, problem = signed_digest(payload)
    if problem:
        return problem
    if signed != digest:
        return (
            f"the signature does not match the image digest: the signature is for {signed}, not {digest} "
            "(tampered, or copied from another image)"
        )
    return None


def well_formed(key: PublicKey, signature: bytes) -> bool:
    """Whether ``signature`` has the shape a signature by a key of this kind has (DER for ECDSA)."""
    if isinstance(key, ec.EllipticCurvePublicKey):
        try:
            decode_dss_signature(signature)
        except ValueError:
            return False
        return True
    if isinstance(key, rsa.RSAPublicKey):
        return len(signature) == (key.key_size + 7) // 8
    return len(signature) == 64


def describe_keys(keys: list[TrustedKey]) -> str:
    return ", ".join(f"{k.name} ({k.fingerprint})" for k in keys)


def _unverified(signature: bytes, payload: bytes, digest: str, keys: list[TrustedKey]) -> str:
    """Why a signature no configured key verifies was refused: tampered, or another key's."""
    problem = payload_problem(payload, digest)
    if problem:  # it does not even claim this image: whatever signed it, it is not this image's signature
        return problem
    if not any(well_formed(k.key, signature) for k in keys):
        return "the signature does not match the image digest: it is not a well-formed signature (tampered)"
    return (
        f"signed with another key: the signature verifies with none of the configured keys "
        f"(container.signature_keys: {describe_keys(keys)}); add the signer's public key there, "
        "or sign with one of these keys"
    )


def verify_layers(
    manifest: dict[str, Any], payloads: dict[str, bytes], digest: str, keys: list[TrustedKey]
) -> SignatureResult:
    """Judge the layers of a ``.sig`` manifest whose payload blobs are in ``payloads``."""
    problems: list[str] = []
    for layer in (manifest.get("layers") or [])[:MAX_SIGNATURE_LAYERS]:
        if not isinstance(layer, dict) or layer.get("mediaType") != SIMPLESIGNING:
            continue
        encoded = (layer.get("annotations") or {}).get(SIGNATURE_ANNOTATION)
        payload = payloads.get(layer.get("digest", ""))
        if not encoded or payload is None:
            problems.append("a signature layer without a signature or payload")
            continue
        try:
            signature = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            problems.append("the signature is not base64 (tampered)")
            continue
        signer = next((k for k in keys if signature_valid(k.key, signature, payload)), None)
        if signer is None:
            problems.append(_unverified(signature, payload, digest, keys))
            continue
        problem = payload_problem(payload, digest)
        if problem:
            problems.append(problem)
            continue
        return SignatureResult("verified", f"signed with {signer.name} ({signer.fingerprint})")
    if not problems:
        return SignatureResult(
            "unsigned", f"no cosign signature for {digest} (its .sig manifest has no simple-signing layer)"
        )
    return SignatureResult("invalid", f"signature of {digest} refused: " + "; ".join(dict.fromkeys(problems)))


class SignatureVerifier:
    """Looks up and checks the signatures of images and add-ons, caching results per digest."""

    def __init__(
        self, registry: RegistryClient, key_paths: tuple[str, ...], allowed_registries: tuple[str, ...]
    ) -> None:
        self.registry = registry
        self.key_paths = key_paths
        self.allowed = allowed_registries
        self._keys: list[TrustedKey] | None = None
        self._cache: dict[str, tuple[SignatureResult, float]] = {}
        self._lock = threading.Lock()

    @property
    def keys(self) -> list[TrustedKey]:
        if self._keys is None:
            self._keys = load_public_keys(self.key_paths)
        return self._keys

    def verify_image(self, image: str) -> SignatureResult:
        """The policy callback: check the signature of the image a step names."""
        try:
            ref = parse_image_ref(image)
        except FlwdError as exc:
            return SignatureResult("error", exc.detail)
        if not registry_allowed(ref, self.allowed):
            return SignatureResult(
                "error", f"registry {ref.registry} is not allowed, so its signatures are not looked up"
            )
        try:
            digest = ref.digest or self.registry.require_manifest(ref).digest
        except ManifestUnknown as exc:
            return SignatureResult("error", exc.detail)
        except RegistryError as exc:
            return SignatureResult("error", f"cannot resolve {image}: {exc.detail}")
        return self.verify_digest(ref, digest)

    def verify_digest(self, ref: ImageRef, digest: str) -> SignatureResult:
        key = f"{ref.registry}/{ref.repository}@{digest}"
        now = time.monotonic()
        with self._lock:
            cached = self._cache.get(key)
        if cached and cached[1] > now:
            return cached[0]
        result = self._lookup(ref, digest)
        if result.status != "error":  # a registry hiccup is retried next time
            with self._lock:
                self._cache[key] = (result, now + CACHE_SECONDS)
        log.info(
            "signature of %s: %s (%s)",
            key,
            result.status,
            result.reason,
            extra={"event": "signature.checked", "artifact": key, "outcome": result.status},
        )
        return result

    def _lookup(self, ref: ImageRef, digest: str) -> SignatureResult:
        try:
            keys = self.keys
        except ConfigError as exc:
            return SignatureResult("error", exc.detail)
        if not keys:
            return SignatureResult(
                "error", "no public keys are configured (container.signature_keys), so no signature can be verified"
            )
        tag = digest.replace(":", "-") + ".sig"
        try:
            manifest = self.registry.get_manifest(
                ref.registry,
                ref.repository,
                tag,
                accept=(OCI_MANIFEST, "application/vnd.docker.distribution.manifest.v2+json"),
            )
            if manifest is None:
                return self._without_sig_tag(ref, digest, tag)
            payloads = {}
            for layer in (manifest.data.get("layers") or [])[:MAX_SIGNATURE_LAYERS]:
                if (
                    isinstance(layer, dict)
                    and layer.get("mediaType") == SIMPLESIGNING
                    and isinstance(layer.get("digest"), str)
                ):
                    payloads[layer["digest"]] = self.registry.get_blob(
                        ref.registry, ref.repository, layer["digest"], MAX_PAYLOAD_BYTES
                    )
        except RegistryError as exc:
            return SignatureResult(
                "error", f"cannot read the signatures of {ref.registry}/{ref.repository}@{digest}: {exc.detail}"
            )
        return verify_layers(manifest.data, payloads, digest, keys)

    def _without_sig_tag(self, ref: ImageRef, digest: str, tag: str) -> SignatureResult:
        missing = self.registry.has_manifest(ref.registry, ref.repository, digest)
        if missing:  # no signature because there is no image: say that, not "unsigned"
            return SignatureResult(
                "error", f"no such image {ref.registry}/{ref.repository}@{digest} (the registry answered: {missing})"
            )
        referrers = self.registry.referrers(ref.registry, ref.repository, digest)
        bundles = [m for m in referrers if str(m.get("artifactType", "")).startswith(BUNDLE_TYPE_PREFIX)]
        if bundles:
            return SignatureResult(
                "unsupported",
                f"unsupported signature format: {ref.registry}/{ref.repository}@{digest} carries a Sigstore bundle "
                f"({bundles[0].get('artifactType')}, cosign v3's default) but no key-based .sig signature; "
                "sign with `cosign sign --key KEY --new-bundle-format=false --use-signing-config=false`",
            )
        return SignatureResult(
            "unsigned", f"{ref.registry}/{ref.repository}@{digest} is not signed (no {tag} signature)"
        )


# -- making signatures (``flwd :addon publish --sign-key``) ---------------------

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey


def load_private_key(pem: bytes, password: bytes | None, name: str) -> PrivateKey:
    """A PEM private key (PKCS#8 or traditional; cosign's own encrypted format is not read)."""
    if b"SIGSTORE PRIVATE KEY" in pem or b"COSIGN PRIVATE KEY" in pem:
        raise ConfigError(
            "sign-key",
            f"{name} is in cosign's encrypted format, which flwd does not read; sign with `cosign sign --key` "
            "or convert the key to PEM (e.g. `cosign import-key-pair` from an openssl-made PKCS#8 key)",
        )
    try:
        key = serialization.load_pem_private_key(pem, password=password)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise ConfigError("sign-key", f"{name}: cannot load the private key ({exc})") from None
    if not isinstance(key, (ec.EllipticCurvePrivateKey, rsa.RSAPrivateKey, ed25519.Ed25519PrivateKey)):
        raise ConfigError("sign-key", f"{name}: unsupported key type {type(key).__name__}")
    return key


def simple_signing_payload(ref: ImageRef, digest: str) -> bytes:
    """The payload cosign signs for ``ref@digest`` (same keys, same order as cosign writes them)."""
    payload = {
        "critical": {
            "identity": {"docker-reference": f"{ref.registry}/{ref.repository}"},
            "image": {"docker-manifest-digest": digest},
            "type": SIGNATURE_TYPE,
        },
        "optional": None,
    }
    return json.dumps(payload, separators=(",", ":")).encode()


def sign_payload(key: PrivateKey, payload: bytes) -> bytes:
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return key.sign(payload, ec.ECDSA(hashes.SHA256()))
    if isinstance(key, rsa.RSAPrivateKey):
        return key.sign(payload, padding.PKCS1v15(), hashes.SHA256())
    return key.sign(payload)


def attach_signature(registry: RegistryClient, ref: ImageRef, digest: str, key: PrivateKey) -> str:
    """Sign ``ref@digest`` and store it at ``sha256-<hex>.sig`` (added to the signatures already there)."""
    payload = simple_signing_payload(ref, digest)
    signature = base64.b64encode(sign_payload(key, payload)).decode()
    tag = digest.replace(":", "-") + ".sig"
    existing = registry.get_manifest(ref.registry, ref.repository, tag, accept=(OCI_MANIFEST,))
    layers = [layer for layer in (existing.data.get("layers") or []) if isinstance(layer, dict)] if existing else []
    payload_digest = registry.push_blob(ref.registry, ref.repository, payload)
    layers.append(
        {
            "mediaType": SIMPLESIGNING,
            "size": len(payload),
            "digest": payload_digest,
            "annotations": {SIGNATURE_ANNOTATION: signature},
        }
    )
    config = {
        "architecture": "",
        "created": "0001-01-01T00:00:00Z",
        "history": [{"created": "0001-01-01T00:00:00Z"}],
        "os": "",
        "rootfs": {"type": "layers", "diff_ids": [layer["digest"] for layer in layers]},
        "config": {},
    }
    config_raw = json.dumps(config, separators=(",", ":")).encode()
    config_digest = registry.push_blob(ref.registry, ref.repository, config_raw)
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "size": len(config_raw),
            "digest": config_digest,
        },
        "layers": layers,
    }
    registry.put_manifest(
        ref.registry, ref.repository, tag, json.dumps(manifest, separators=(",", ":")).encode(), OCI_MANIFEST
    )
    return tag
