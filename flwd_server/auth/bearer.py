"""Who is calling, and what they may do: bearer tokens to a :class:`Principal`.

No Flask here: the web layer passes the ``Authorization`` header in and gets a
principal or an :class:`~flwd_server.errors.Unauthenticated` back.  ``--dev``
adds the fixed ``dev-token`` and ``dev-approver`` (another subject, so the
two-person rule of approvals can be tried); real deployments verify signed JWTs against a
JWKS file (``auth.jwk_file``), see :mod:`flwd_server.auth.tokens`.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
from collections.abc import Callable
from typing import Any

from ..errors import Unauthenticated
from ..models import Principal
from .scopes import SCOPES

DEV_TOKEN = "dev-token"
DEV_PRINCIPAL = Principal("dev", frozenset(SCOPES))
DEV_APPROVER_TOKEN = "dev-approver"  # the same scopes, another subject: it may approve dev-token's runs
DEV_PRINCIPALS = {DEV_TOKEN: DEV_PRINCIPAL, DEV_APPROVER_TOKEN: Principal("dev-approver", frozenset(SCOPES))}
MAX_TOKEN_LENGTH = 8192
MALFORMED = "the bearer token is not a well-formed JWT (header.payload.signature, base64url)"


def bearer_token(header: str | None) -> str:
    """Extract the token of an RFC 6750 ``Authorization: Bearer`` header.

    No header, or another scheme (Basic, ...), counts as no credentials: the
    401 then carries no ``error`` code (RFC 6750 section 3.1).
    """
    if not header or not header.strip():
        raise Unauthenticated("this request needs an 'Authorization: Bearer <token>' header", error=None)
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "bearer":
        raise Unauthenticated("only bearer tokens are accepted: send 'Authorization: Bearer <token>'", error=None)
    token = token.strip()
    if not token:
        raise Unauthenticated("the Authorization header has no token after 'Bearer'")
    if len(token) > MAX_TOKEN_LENGTH or any(c.isspace() for c in token):
        raise Unauthenticated("the bearer token is malformed (too long, or it contains spaces)")
    return token


def unverified_header(token: str) -> dict[str, Any]:
    """The JOSE header, only to choose the key (or to say what is wrong); the signature check parses it again."""
    segments = token.split(".")
    if len(segments) != 3:
        raise Unauthenticated(MALFORMED)
    try:
        header = json.loads(base64.urlsafe_b64decode(segments[0] + "=" * (-len(segments[0]) % 4)))
    except (ValueError, binascii.Error, RecursionError):
        raise Unauthenticated(MALFORMED) from None
    if not isinstance(header, dict):
        raise Unauthenticated(MALFORMED)
    return header


class Authenticator:
    """Turns a bearer token into a principal; ``verify_jwt`` is None when no JWKS is configured."""

    def __init__(self, dev: bool, verify_jwt: Callable[[str], Principal] | None = None) -> None:
        self.dev = dev
        self.verify_jwt = verify_jwt

    def authenticate(self, header: str | None) -> Principal:
        token = bearer_token(header)
        # As bytes: compare_digest refuses str with non-ASCII characters (a TypeError, so a 500).
        given = token.encode("utf-8", "surrogateescape")
        for dev_token, dev_principal in DEV_PRINCIPALS.items():
            if hmac.compare_digest(given, dev_token.encode()):
                if self.dev:
                    return dev_principal
                raise Unauthenticated(f"{dev_token} is accepted only by a server started with --dev")
        if self.verify_jwt is None:  # --dev without auth.jwk_file: say what is wrong with this token
            unverified_header(token)
            raise Unauthenticated(
                "this server verifies no signed tokens (auth.jwk_file is not set), so it cannot accept this JWT; "
                "it accepts dev-token and dev-approver"
            )
        return self.verify_jwt(token)
