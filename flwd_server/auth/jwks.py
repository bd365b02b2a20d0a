"""JWKS documents: which public keys a flwd server will verify tokens with, and why not the others.

Each usable key has a ``kid`` and exactly one algorithm, fixed by its type
(RSA: RS256, EC P-256: ES256, OKP Ed25519: EdDSA), never by a token.  Shared
secrets (``oct``), private key material, short RSA keys and keys meant for
something else are skipped with a reason; :mod:`flwd_server.auth.tokens` refuses to
start when none is left.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa

SUPPORTED_ALGORITHMS = ("RS256", "ES256", "EdDSA")
MIN_RSA_BITS = 2048


def pinned_algorithm(jwk: dict[str, Any]) -> str | None:
    """The one algorithm a public JWK verifies, from its key type (never from a token)."""
    kty, crv = jwk.get("kty"), jwk.get("crv")
    if kty == "RSA":
        return "RS256"
    if kty == "EC" and crv == "P-256":
        return "ES256"
    if kty == "OKP" and crv == "Ed25519":
        return "EdDSA"
    return None


@dataclass(frozen=True)
class KeySet:
    """The usable keys of one JWKS document, by ``kid``, and why others were skipped."""

    keys: dict[str, jwt.PyJWK] = field(default_factory=dict)
    skipped: tuple[str, ...] = ()
    digest: str = ""


def _usable_key(index: int, jwk: Any, allowed: tuple[str, ...]) -> tuple[str, jwt.PyJWK]:
    """Check one JWK entry; raises ValueError with the reason it cannot be used."""
    if not isinstance(jwk, dict):
        raise ValueError(f"keys[{index}]: expected a JSON object")
    kid = jwk.get("kid")
    if not isinstance(kid, str) or not kid or len(kid) > 256:
        raise ValueError(f"keys[{index}]: needs a 'kid' (a non-empty string): tokens choose their key by kid")
    where = f"key {kid!r}"
    if jwk.get("kty") == "oct":
        raise ValueError(f"{where}: symmetric (oct) keys are refused; flwd verifies public-key signatures only")
    if any(name in jwk for name in ("d", "p", "q", "dp", "dq", "qi", "k")):
        raise ValueError(f"{where}: holds private key material; publish only the public key")
    if jwk.get("use") not in (None, "sig"):
        raise ValueError(f"{where}: 'use' is {jwk.get('use')!r}, not 'sig'")
    ops = jwk.get("key_ops")
    if ops is not None and (not isinstance(ops, list) or "verify" not in ops):
        raise ValueError(f"{where}: 'key_ops' does not include 'verify'")
    algorithm = pinned_algorithm(jwk)
    if algorithm is None:
        raise ValueError(
            f"{where}: unsupported key type {jwk.get('kty')!r}/{jwk.get('crv')!r} (use RSA, EC P-256 or OKP Ed25519)"
        )
    if jwk.get("alg") not in (None, algorithm):
        raise ValueError(f"{where}: 'alg' is {jwk.get('alg')!r}, but flwd verifies this key type with {algorithm} only")
    if algorithm not in allowed:
        raise ValueError(f"{where}: {algorithm} is not in auth.algorithms")
    try:
        key = jwt.PyJWK(jwk, algorithm=algorithm)
    except (jwt.PyJWTError, ValueError, TypeError) as exc:
        raise ValueError(f"{where}: not a valid {algorithm} public key ({type(exc).__name__})") from None
    if isinstance(key.key, rsa.RSAPublicKey) and key.key.key_size < MIN_RSA_BITS:
        raise ValueError(f"{where}: RSA key of {key.key.key_size} bits; at least {MIN_RSA_BITS} are required")
    return kid, key


def parse_jwks(text: str | bytes, allowed: tuple[str, ...] = SUPPORTED_ALGORITHMS) -> KeySet:
    """Parse a JWKS document; raises ValueError when it is not one (not when keys are unusable)."""
    try:
        document = json.loads(text)
    except (ValueError, UnicodeDecodeError):
        raise ValueError("not valid JSON") from None
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise ValueError('expected a JSON object {"keys": [...]}')
    keys: dict[str, jwt.PyJWK] = {}
    skipped: list[str] = []
    seen: set[str] = set()
    for index, entry in enumerate(document["keys"]):
        try:
            kid, key = _usable_key(index, entry, allowed)
        except ValueError as exc:
            skipped.append(str(exc))
            continue
        if kid in seen:
            keys.pop(kid, None)
            skipped.append(f"key {kid!r}: the kid appears more than once, so none of its keys is used")
            continue
        seen.add(kid)
        keys[kid] = key
    raw = text.encode() if isinstance(text, str) else text
    return KeySet(keys, tuple(skipped), hashlib.sha256(raw).hexdigest())
