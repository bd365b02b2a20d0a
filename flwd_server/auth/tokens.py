"""Signed bearer tokens: JWTs verified against the JWKS file ``auth.jwk_file``.

No Flask here.  :class:`TokenVerifier` turns a compact JWT into a
:class:`~flwd_server.models.Principal` or raises
:class:`~flwd_server.errors.Unauthenticated` with a fixed message (never an
exception's text).  What it enforces, and why:

- The key is chosen by the header's ``kid``, and its algorithm is pinned by
  the key's type: RSA verifies RS256 only, EC P-256 ES256, OKP Ed25519 EdDSA.
  The header's ``alg`` must equal that pin, so ``none``, HS256 signed with the
  public key and any other algorithm are refused before a signature is looked at.
  Symmetric (``oct``) keys and private key material are never loaded.
- ``iss`` (exact), ``aud`` (ours among them), ``exp``, ``iat`` and ``sub`` are
  required; ``exp``, ``nbf`` and ``iat`` are checked with ``auth.leeway``.
  ``crit`` header parameters are refused: flwd understands none.
- The JWKS file is re-read when its mtime, size or inode change (key rotation
  without a restart); a ``kid`` not in the set forces at most one re-read per
  ``reload_interval``.  A file that cannot be read or parsed keeps the last good
  keys (and logs an error); a file that parses holds exactly the keys it lists.
- Verified tokens are cached by their SHA-256 until they expire; every entry is
  dropped when the key set changes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import jwt

from ..config import AuthSettings, Settings
from ..errors import ConfigError, Unauthenticated
from ..models import Principal
from .bearer import MALFORMED, unverified_header
from .jwks import SUPPORTED_ALGORITHMS, KeySet, parse_jwks

log = logging.getLogger("flwd.auth")

REQUIRED_CLAIMS = ("iss", "sub", "aud", "exp", "iat")
MAX_SUBJECT_LENGTH = 255
RACY_SECONDS = 2.0  # a file changed this close to its last read may change again unseen (coarse mtimes)


def _numeric(claims: dict[str, Any], name: str) -> float | None:
    value = claims.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise Unauthenticated(f"the token's {name!r} claim must be a number of seconds since the epoch")
    return float(value)


def split_scopes(text: str) -> list[str]:
    """The scopes of a space-separated string: U+0020 only separates (RFC 6749 section 3.3).

    ``str.split()`` would also split on tabs, NBSP, U+2028, U+001C..U+001F and the
    like, so ``"jobs:read\u00a0sources:read"`` would grant two scopes; here it is one
    scope no route declares, which grants nothing, like any unknown scope.  Empty
    parts (leading, trailing or doubled spaces) name no scope and are dropped.
    """
    return [part for part in text.split(" ") if part]


def scopes_of(claims: dict[str, Any]) -> frozenset[str]:
    """Scopes from ``scope`` (space-separated) and ``scp`` (a list, or a space-separated string)."""
    scopes: set[str] = set()
    scope = claims.get("scope")
    if scope is not None:
        if not isinstance(scope, str):
            raise Unauthenticated("the token's 'scope' claim must be a space-separated string")
        scopes.update(split_scopes(scope))
    scp = claims.get("scp")
    if scp is not None:
        if isinstance(scp, str):
            scopes.update(split_scopes(scp))
        elif isinstance(scp, list) and all(isinstance(item, str) for item in scp):
            scopes.update(scp)  # each item is one whole scope
        else:
            raise Unauthenticated("the token's 'scp' claim must be a list of strings or a space-separated string")
    return frozenset(scopes)


def _require_subject(claims: dict[str, Any]) -> str:
    subject = claims["sub"]
    if not isinstance(subject, str) or not subject.strip() or len(subject) > MAX_SUBJECT_LENGTH:
        raise Unauthenticated(
            f"the token's 'sub' claim must be a non-empty string of at most {MAX_SUBJECT_LENGTH} characters"
        )
    if not subject.isprintable():
        raise Unauthenticated("the token's 'sub' claim must not contain control characters")
    return subject


class TokenVerifier:
    """Verifies bearer JWTs for one issuer and audience against a JWKS file.

    Thread-safe; call it with the token text.  ``clock`` gives wall-clock
    seconds (claims and cache), ``monotonic`` paces forced reloads.
    """

    def __init__(
        self,
        auth: AuthSettings,
        *,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        reload_interval: float = 10.0,
    ) -> None:
        missing = [name for name in ("issuer", "audience", "jwk_file") if not getattr(auth, name)]
        if missing:
            raise ConfigError(
                "auth." + missing[0],
                f"token verification needs auth.issuer, auth.audience and auth.jwk_file (missing: {', '.join('auth.' + m for m in missing)})",
            )
        unknown = [a for a in auth.algorithms if a not in SUPPORTED_ALGORITHMS]
        if unknown or not auth.algorithms:
            raise ConfigError(
                "auth.algorithms",
                f"supported are {', '.join(SUPPORTED_ALGORITHMS)} (public-key signatures only); got {', '.join(unknown) or 'none'}",
            )
        self.issuer: str = auth.issuer  # type: ignore[assignment]
        self.audience: str = auth.audience  # type: ignore[assignment]
        self.path: str = os.path.expanduser(auth.jwk_file)  # type: ignore[arg-type]
        self.leeway = float(auth.leeway)
        self.algorithms = tuple(auth.algorithms)
        self.cache_size = auth.token_cache_size
        self.reload_interval = reload_interval
        self.reads = 0  # times the file was read (tests check that unknown kids cannot force more)
        self._clock = clock
        self._monotonic = monotonic
        self._lock = threading.Lock()
        self._keyset = KeySet()
        self._stat: tuple[int, ...] | None = None
        self._racy = True
        self._last_forced = -math.inf
        self._generation = 0
        self._cache: OrderedDict[bytes, tuple[Principal, float]] = OrderedDict()
        self._jws = jwt.PyJWS(options={"verify_signature": True, "enforce_minimum_key_length": True})

    # -- the key set ------------------------------------------------------------

    def load(self) -> KeySet:
        """Read the JWKS now; raises ConfigError unless it holds at least one usable key (start-up check)."""
        try:
            raw = self._read()
            keyset = parse_jwks(raw, self.algorithms)
        except OSError as exc:
            raise ConfigError("auth.jwk_file", f"cannot read {self.path}: {exc.strerror}") from None
        except ValueError as exc:
            raise ConfigError("auth.jwk_file", f"{self.path}: {exc}") from None
        if not keyset.keys:
            reasons = "; ".join(keyset.skipped) or "the 'keys' list is empty"
            raise ConfigError("auth.jwk_file", f"{self.path} holds no usable key: {reasons}")
        with self._lock:
            self._install(keyset)
        return keyset

    @property
    def kids(self) -> tuple[str, ...]:
        return tuple(self._keyset.keys)

    def _read(self) -> bytes:
        with open(self.path, "rb") as handle:
            stat = os.fstat(handle.fileno())
            raw = handle.read(1024 * 1024 + 1)
        if len(raw) > 1024 * 1024:
            raise ValueError("larger than 1 MiB; that is not a key set")
        self._stat = self._signature(stat)
        self._racy = time.time() - stat.st_mtime < RACY_SECONDS
        self.reads += 1
        return raw

    @staticmethod
    def _signature(stat: os.stat_result) -> tuple[int, ...]:
        return (stat.st_mtime_ns, stat.st_ctime_ns, stat.st_size, stat.st_ino, stat.st_dev)

    def _install(self, keyset: KeySet) -> None:
        """Use ``keyset`` (lock held); a changed set drops every cached token."""
        if keyset.digest != self._keyset.digest:
            for reason in keyset.skipped:
                log.warning("JWKS %s: %s", self.path, reason, extra={"event": "auth.jwks_key_skipped"})
            if not keyset.keys:
                log.error(
                    "JWKS %s now holds no usable key: every token is refused",
                    self.path,
                    extra={"event": "auth.jwks_empty"},
                )
            log.info(
                "JWKS %s loaded: keys %s",
                self.path,
                ", ".join(keyset.keys) or "(none)",
                extra={"event": "auth.jwks_loaded", "kids": list(keyset.keys)},
            )
            self._generation += 1
            self._cache.clear()
        self._keyset = keyset

    def _reload(self) -> None:
        """Re-read the file (lock held); a file that cannot be read or parsed keeps the last good keys."""
        try:
            raw = self._read()
            if hashlib.sha256(raw).hexdigest() == self._keyset.digest:
                return
            keyset = parse_jwks(raw, self.algorithms)
        except (OSError, ValueError) as exc:
            detail = exc.strerror if isinstance(exc, OSError) else str(exc)
            log.error(
                "JWKS %s cannot be used (%s); keeping the previous keys",
                self.path,
                detail,
                extra={"event": "auth.jwks_unreadable"},
            )
            return
        self._install(keyset)

    def refresh(self) -> None:
        """Pick up a changed JWKS file (cheap when nothing changed: one stat)."""
        try:
            current: tuple[int, ...] | None = self._signature(os.stat(self.path))
        except OSError:
            current = None
        if current is not None and current == self._stat and not self._racy:
            return
        with self._lock:
            if current is None:
                if self._stat is not None:
                    log.error(
                        "JWKS %s is missing; keeping the previous keys",
                        self.path,
                        extra={"event": "auth.jwks_unreadable"},
                    )
                    self._stat = None
                return
            if current != self._stat or self._racy:
                self._reload()

    def _key_for(self, kid: str) -> jwt.PyJWK:
        key = self._keyset.keys.get(kid)
        if key is not None:
            return key
        with self._lock:
            now = self._monotonic()
            if now - self._last_forced >= self.reload_interval:
                self._last_forced = now
                self._reload()
        key = self._keyset.keys.get(kid)
        if key is None:
            raise Unauthenticated("the token was signed with a key this server does not know (unknown kid)")
        return key

    # -- tokens -----------------------------------------------------------------

    def __call__(self, token: str) -> Principal:
        return self.verify(token)

    def verify(self, token: str) -> Principal:
        """The principal of a valid token; raises Unauthenticated saying what is wrong."""
        self.refresh()
        generation = self._generation
        digest = hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()
        cached = self._cached(digest)
        if cached is not None:
            return cached
        try:
            claims = self._verified_claims(token)
            principal = Principal(_require_subject(claims), scopes_of(claims))
        except Unauthenticated as exc:
            log.info("token refused: %s", exc.detail, extra={"event": "auth.refused", "reason": exc.detail})
            raise
        self._remember(digest, principal, float(claims["exp"]) + self.leeway, generation)
        return principal

    def _verified_claims(self, token: str) -> dict[str, Any]:
        header = unverified_header(token)
        if "crit" in header:
            raise Unauthenticated("the token has critical header parameters ('crit') this server does not understand")
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid:
            raise Unauthenticated("the token header has no 'kid'; this server chooses the verification key by kid")
        key = self._key_for(kid)
        alg = header.get("alg")
        if alg != key.algorithm_name:
            raise Unauthenticated(f"the token's algorithm is not allowed: its key verifies {key.algorithm_name} only")
        try:
            decoded = self._jws.decode_complete(token, key=key, algorithms=[key.algorithm_name])
        except jwt.InvalidSignatureError:
            raise Unauthenticated("the token's signature does not verify") from None
        except jwt.InvalidAlgorithmError:
            raise Unauthenticated(
                f"the token's algorithm is not allowed: its key verifies {key.algorithm_name} only"
            ) from None
        except jwt.PyJWTError:
            raise Unauthenticated(MALFORMED) from None
        try:
            claims = json.loads(decoded["payload"])
        except (ValueError, RecursionError):
            claims = None
        if not isinstance(claims, dict):
            raise Unauthenticated("the token's payload is not a JSON object of claims")
        self._check_claims(claims)
        return claims

    def _check_claims(self, claims: dict[str, Any]) -> None:
        for name in REQUIRED_CLAIMS:
            if claims.get(name) is None:
                raise Unauthenticated(f"the token has no {name!r} claim (required: {', '.join(REQUIRED_CLAIMS)})")
        if claims["iss"] != self.issuer:
            raise Unauthenticated("the token was issued by another issuer ('iss' does not match auth.issuer)")
        audience = claims["aud"]
        audiences = [audience] if isinstance(audience, str) else audience
        if not isinstance(audiences, list) or not all(isinstance(a, str) for a in audiences):
            raise Unauthenticated("the token's 'aud' claim must be a string or a list of strings")
        if self.audience not in audiences:
            raise Unauthenticated("the token is meant for another audience ('aud' does not include auth.audience)")
        now = self._clock()
        exp, nbf, iat = _numeric(claims, "exp"), _numeric(claims, "nbf"), _numeric(claims, "iat")
        assert exp is not None and iat is not None
        if now >= exp + self.leeway:
            raise Unauthenticated("the token has expired")
        if nbf is not None and nbf > now + self.leeway:
            raise Unauthenticated("the token is not valid yet ('nbf' is in the future)")
        if iat > now + self.leeway:
            raise Unauthenticated("the token was issued in the future ('iat'); check the issuer's clock")

    # -- the cache of verified tokens -------------------------------------------

    def _cached(self, digest: bytes) -> Principal | None:
        if not self.cache_size:
            return None
        with self._lock:
            entry = self._cache.get(digest)
            if entry is None:
                return None
            principal, expires = entry
            if self._clock() >= expires:
                del self._cache[digest]
                return None
            self._cache.move_to_end(digest)
            return principal

    def _remember(self, digest: bytes, principal: Principal, expires: float, generation: int) -> None:
        if not self.cache_size:
            return
        with self._lock:
            if generation != self._generation:
                return  # verified against keys that have changed since
            self._cache[digest] = (principal, expires)
            self._cache.move_to_end(digest)
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)

    @property
    def cached_tokens(self) -> int:
        return len(self._cache)


def token_verifier(auth: AuthSettings) -> TokenVerifier | None:
    """The verifier of these settings, or None when no JWKS is configured (the keys load on first use)."""
    if not (auth.issuer or auth.audience or auth.jwk_file):
        return None
    return TokenVerifier(auth)


def require_auth(settings: Settings) -> None:
    """Start-up check: a server without ``--dev`` must be able to verify tokens.

    Raises ConfigError naming what to set, or what is wrong with the JWKS file.
    """
    auth = settings.auth
    configured = auth.issuer or auth.audience or auth.jwk_file
    if not configured:
        if settings.dev:
            return
        raise ConfigError(
            "auth",
            "this server has no way to verify clients: set auth.issuer, auth.audience and auth.jwk_file "
            "in the config file (see docs/auth.rst), or start with --dev for a local experiment",
        )
    verifier = TokenVerifier(auth)
    keyset = verifier.load()
    for reason in keyset.skipped:
        log.warning("JWKS %s: %s", verifier.path, reason, extra={"event": "auth.jwks_key_skipped"})
