"""A deployment's own signing keys: key pairs, the JWKS file, and minting tokens.

Used by ``flwd :keys`` and ``flwd :token``; the server only ever reads the
public half (:mod:`flwd_server.auth.tokens`).  Key ids default to the RFC 7638
thumbprint of the public key, so a PEM file and its JWKS entry agree without
anyone writing the kid down.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import secrets
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

from ..errors import FlwdError
from ..formats.atomic_file import atomic_file

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey
KEY_ALGORITHMS = ("ES256", "RS256", "EdDSA")
THUMBPRINT_MEMBERS = {"RSA": ("e", "kty", "n"), "EC": ("crv", "kty", "x", "y"), "OKP": ("crv", "kty", "x")}


class SigningKeyError(FlwdError):
    """Raised when a key file cannot be used to sign, or a JWKS file cannot be changed."""

    status = 400
    slug = "key-error"
    title = "Unusable key"


def generate(algorithm: str) -> PrivateKey:
    """A new private key for ``algorithm`` (ES256: P-256, RS256: RSA 3072, EdDSA: Ed25519)."""
    if algorithm == "ES256":
        return ec.generate_private_key(ec.SECP256R1())
    if algorithm == "RS256":
        return rsa.generate_private_key(public_exponent=65537, key_size=3072)
    if algorithm == "EdDSA":
        return ed25519.Ed25519PrivateKey.generate()
    raise SigningKeyError(f"unsupported algorithm {algorithm!r} (use one of {', '.join(KEY_ALGORITHMS)})")


def algorithm_of(key: PrivateKey) -> str:
    if isinstance(key, rsa.RSAPrivateKey):
        if key.key_size < 2048:
            raise SigningKeyError(f"the RSA key has {key.key_size} bits; flwd servers accept 2048 or more")
        return "RS256"
    if isinstance(key, ec.EllipticCurvePrivateKey):
        if not isinstance(key.curve, ec.SECP256R1):
            raise SigningKeyError(f"the EC key is on {key.curve.name}; flwd signs ES256, which needs P-256")
        return "ES256"
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return "EdDSA"
    raise SigningKeyError(f"unsupported key type {type(key).__name__} (use RSA, EC P-256 or Ed25519)")


def thumbprint(jwk: dict[str, Any]) -> str:
    """RFC 7638 JWK thumbprint (SHA-256, base64url)."""
    members = THUMBPRINT_MEMBERS[jwk["kty"]]
    canonical = json.dumps({name: jwk[name] for name in members}, separators=(",", ":"), sort_keys=True)
    return base64.urlsafe_b64encode(hashlib.sha256(canonical.encode()).digest()).rstrip(b"=").decode()


def public_jwk(key: PrivateKey, kid: str | None = None) -> dict[str, Any]:
    """The public JWK of ``key``, with ``kid`` (default: its thumbprint), ``alg`` and ``use``."""
    algorithm = algorithm_of(key)
    public = key.public_key()
    if isinstance(public, rsa.RSAPublicKey):
        jwk = RSAAlgorithm.to_jwk(public, as_dict=True)
    elif isinstance(public, ec.EllipticCurvePublicKey):
        jwk = ECAlgorithm.to_jwk(public, as_dict=True)
    else:
        jwk = OKPAlgorithm.to_jwk(public, as_dict=True)
    jwk = {name: value for name, value in jwk.items() if name in THUMBPRINT_MEMBERS[jwk["kty"]]}
    return {"kid": kid or thumbprint(jwk), **jwk, "alg": algorithm, "use": "sig"}


def private_pem(key: PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def load_private_key(path: str | os.PathLike[str]) -> tuple[PrivateKey, str | None]:
    """A private key from a PEM file or a JWK (JSON) file, and the JWK's ``kid`` if it has one."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise SigningKeyError(f"cannot read the key file {path}: {exc.strerror}") from None
    if data.lstrip().startswith(b"{"):
        try:
            jwk = json.loads(data)
        except ValueError:
            raise SigningKeyError(f"{path}: starts like a JWK but is not valid JSON") from None
        if not isinstance(jwk, dict) or "d" not in jwk:
            raise SigningKeyError(f"{path}: a public JWK cannot sign; give the private key (with 'd')")
        try:
            key = jwt.PyJWK(jwk).key
        except (jwt.PyJWTError, ValueError, TypeError) as exc:
            raise SigningKeyError(f"{path}: not a usable private JWK ({type(exc).__name__})") from None
        kid = jwk.get("kid")
        return key, kid if isinstance(kid, str) and kid else None
    if b"PUBLIC KEY" in data and b"PRIVATE KEY" not in data:
        raise SigningKeyError(f"{path}: this is a public key; signing needs the private key")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise SigningKeyError(
            f"{path}: the key is encrypted; decrypt it first (openssl pkey -in KEY -out PLAIN)"
        ) from None
    except ValueError:
        raise SigningKeyError(f"{path}: not a PEM private key or a private JWK") from None
    algorithm_of(key)  # type: ignore[arg-type]
    return key, None  # type: ignore[return-value]


def mint(
    key: PrivateKey,
    *,
    issuer: str,
    audience: str,
    subject: str,
    scopes: Iterable[str],
    lifetime: int,
    kid: str | None = None,
    now: float | None = None,
) -> str:
    """A signed JWT a flwd server with this key's public half in its JWKS accepts."""
    issued = int(time.time() if now is None else now)
    claims = {
        "iss": issuer,
        "sub": subject,
        "aud": audience,
        "iat": issued,
        "nbf": issued,
        "exp": issued + lifetime,
        "jti": secrets.token_urlsafe(12),
        "scope": " ".join(sorted(set(scopes))),
    }
    headers = {"kid": kid or public_jwk(key)["kid"], "typ": "JWT"}
    return jwt.encode(claims, key, algorithm=algorithm_of(key), headers=headers)


# -- the JWKS file -------------------------------------------------------------


def read_jwks(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The JWKS document at ``path`` (``{"keys": []}`` if it does not exist)."""
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        return {"keys": []}
    except OSError as exc:
        raise SigningKeyError(f"cannot read {path}: {exc.strerror}") from None
    try:
        document = json.loads(text)
    except ValueError:
        raise SigningKeyError(f"{path} is not valid JSON") from None
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise SigningKeyError(f'{path} is not a JWKS document ({{"keys": [...]}})')
    return document


def write_atomic(path: str | os.PathLike[str], data: bytes, mode: int) -> None:
    """Write a whole file at once (a server reading it never sees half of it)."""
    with atomic_file(path, mode) as handle:
        handle.write(data)


def write_jwks(path: str | os.PathLike[str], document: dict[str, Any]) -> None:
    write_atomic(path, (json.dumps(document, indent=2) + "\n").encode(), 0o644)


def add_key(path: str | os.PathLike[str], jwk: dict[str, Any]) -> list[str]:
    """Add a public JWK to the JWKS file; returns the kids it now holds."""
    document = read_jwks(path)
    kids = [k.get("kid") for k in document["keys"] if isinstance(k, dict)]
    if jwk["kid"] in kids:
        raise SigningKeyError(f"{path} already holds a key with kid {jwk['kid']!r}")
    document["keys"].append(jwk)
    write_jwks(path, document)
    return [*kids, jwk["kid"]]


def remove_key(path: str | os.PathLike[str], kid: str) -> list[str]:
    """Drop the key ``kid`` from the JWKS file; returns the kids left."""
    document = read_jwks(path)
    kept = [k for k in document["keys"] if not (isinstance(k, dict) and k.get("kid") == kid)]
    if len(kept) == len(document["keys"]):
        raise SigningKeyError(f"{path} holds no key with kid {kid!r}")
    document["keys"] = kept
    write_jwks(path, document)
    return [k.get("kid") for k in kept if isinstance(k, dict)]
