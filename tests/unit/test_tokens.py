"""The JWT verifier, with tokens built by hand (tests/fixtures/tokens.py), never by PyJWT."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import time
from pathlib import Path

import pytest

from flwd_server.auth import keys as signing
from flwd_server.auth.bearer import Authenticator, bearer_token
from flwd_server.auth.jwks import parse_jwks
from flwd_server.auth.tokens import TokenVerifier, require_auth, scopes_of, token_verifier
from flwd_server.config import AuthSettings, load_settings
from flwd_server.errors import ConfigError, Unauthenticated
from flwd_server.web.serving import warn_if_exposed
from tests.fixtures.tokens import (
    ALGORITHMS,
    AUDIENCE,
    DROP,
    ISSUER,
    JwtAuth,
    b64url,
    b64url_json,
    claims,
    encode,
    hs256_token,
    make_token,
    new_key,
    tamper,
    unsigned_token,
    write_jwks,
)


def settings_for(jwt_auth: JwtAuth, **overrides) -> AuthSettings:
    return AuthSettings(**{**jwt_auth.config, "leeway": 30, **overrides})


@pytest.fixture
def verifier(jwt_auth: JwtAuth) -> TokenVerifier:
    v = TokenVerifier(settings_for(jwt_auth))
    v.load()
    return v


def refused(verifier: TokenVerifier, token: str) -> str:
    with pytest.raises(Unauthenticated) as caught:
        verifier.verify(token)
    assert caught.value.status == 401 and caught.value.error == "invalid_token"
    return caught.value.detail


# -- accepted ------------------------------------------------------------------


@pytest.mark.parametrize("alg", ALGORITHMS)
def test_a_hand_signed_token_of_each_algorithm_is_accepted_with_its_scopes(verifier, jwt_auth, alg):
    token = make_token(jwt_auth.keys[alg], claims("runs:read runs:write", sub=f"ci-{alg}"))
    principal = verifier.verify(token)
    assert principal.subject == f"ci-{alg}"
    assert principal.scopes == {"runs:read", "runs:write"}


def test_a_token_minted_by_flwd_keys_is_accepted(tmp_path):
    key = signing.generate("ES256")
    jwks = tmp_path / "jwks.json"
    signing.add_key(jwks, signing.public_jwk(key))
    v = TokenVerifier(AuthSettings(issuer=ISSUER, audience=AUDIENCE, jwk_file=str(jwks)))
    token = signing.mint(key, issuer=ISSUER, audience=AUDIENCE, subject="alice", scopes=["runs:read"], lifetime=60)
    assert v.verify(token).subject == "alice"


def test_an_audience_list_that_includes_ours_is_accepted(verifier, jwt_auth):
    assert verifier.verify(jwt_auth.token("jobs:read", aud=["other", AUDIENCE])).scopes == {"jobs:read"}


@pytest.mark.parametrize("claim,offset", [("exp", -10), ("nbf", 10), ("iat", 20)])
def test_times_within_the_leeway_are_accepted(verifier, jwt_auth, claim, offset):
    assert verifier.verify(jwt_auth.token("jobs:read", **{claim: int(time.time()) + offset}))


def test_nbf_is_optional(verifier, jwt_auth):
    assert verifier.verify(jwt_auth.token("jobs:read", nbf=DROP))


# -- refused -------------------------------------------------------------------


class FromNow:
    """A time relative to when the test runs (not to when parameters were collected)."""

    def __init__(self, seconds: int) -> None:
        self.seconds = seconds

    def __repr__(self) -> str:
        return f"now{self.seconds:+d}"


def now() -> int:
    return int(time.time())


@pytest.mark.parametrize(
    "overrides,message",
    [
        ({"iss": "https://evil.example.org/"}, "another issuer"),
        ({"iss": ISSUER + "evil"}, "another issuer"),
        ({"iss": ISSUER.rstrip("/")}, "another issuer"),
        ({"iss": [ISSUER]}, "another issuer"),
        ({"aud": "other"}, "another audience"),
        ({"aud": ["other", "flwd-admin"]}, "another audience"),
        ({"aud": AUDIENCE + "x"}, "another audience"),
        ({"aud": {"flwd": True}}, "'aud' claim must be"),
        ({"aud": DROP}, "no 'aud' claim"),
        ({"exp": DROP}, "no 'exp' claim"),
        ({"iss": DROP}, "no 'iss' claim"),
        ({"iat": DROP}, "no 'iat' claim"),
        ({"sub": DROP}, "no 'sub' claim"),
        ({"exp": FromNow(-40)}, "expired"),
        ({"exp": "9999999999"}, "must be a number"),
        ({"exp": True}, "must be a number"),
        ({"nbf": FromNow(60)}, "not valid yet"),
        ({"iat": FromNow(60)}, "issued in the future"),
        ({"sub": ""}, "'sub' claim must be"),
        ({"sub": 42}, "'sub' claim must be"),
        ({"sub": "alice\nlevel=admin"}, "control characters"),
        ({"scope": ["runs:write"]}, "'scope' claim must be"),
        ({"scp": [["runs:write"]]}, "'scp' claim must be"),
    ],
    ids=lambda v: repr(v)[:40],
)
def test_bad_claims_are_refused(verifier, jwt_auth, overrides, message):
    overrides = {k: now() + v.seconds if isinstance(v, FromNow) else v for k, v in overrides.items()}
    assert message in refused(verifier, jwt_auth.token("runs:write", **overrides))


@pytest.mark.parametrize("alg", ["none", "None", "NONE", DROP, ""])
def test_unsigned_tokens_are_refused(verifier, jwt_auth, alg):
    detail = refused(verifier, unsigned_token(claims("runs:write"), jwt_auth.keys["RS256"].kid, alg=alg))
    assert "algorithm is not allowed" in detail


@pytest.mark.parametrize("alg", ["RS256", "ES256", "EdDSA"])
@pytest.mark.parametrize("secret_form", ["pem", "jwk-json", "jwk-json-sorted"])
def test_hs256_signed_with_the_public_key_is_refused(verifier, jwt_auth, alg, secret_form):
    key = jwt_auth.keys[alg]
    secret = {
        "pem": key.public_pem(),
        "jwk-json": json.dumps(key.public_jwk()).encode(),
        "jwk-json-sorted": json.dumps(key.public_jwk(), sort_keys=True, separators=(",", ":")).encode(),
    }[secret_form]
    assert "algorithm is not allowed" in refused(verifier, hs256_token(secret, claims("runs:write"), key.kid))


@pytest.mark.parametrize(
    "kid_alg,header_alg",
    [
        ("RS256", "RS512"),
        ("RS256", "PS256"),
        ("RS256", "ES256"),
        ("ES256", "ES384"),
        ("ES256", "EdDSA"),
        ("EdDSA", "Ed25519"),
    ],
)
def test_an_algorithm_the_key_does_not_allow_is_refused(verifier, jwt_auth, kid_alg, header_alg):
    token = make_token(jwt_auth.keys[kid_alg], claims("runs:write"), alg=header_alg)
    assert "algorithm is not allowed" in refused(verifier, token)


def test_a_token_signed_with_one_key_but_naming_anothers_kid_is_refused(verifier, jwt_auth):
    a, b = new_key("ES256", kid=jwt_auth.keys["ES256"].kid), jwt_auth.keys["ES256"]
    assert a.kid == b.kid
    assert "signature does not verify" in refused(verifier, make_token(a, claims("runs:write")))


def test_an_embedded_jwk_header_is_not_trusted(verifier, jwt_auth):
    attacker = new_key("ES256", kid=jwt_auth.keys["ES256"].kid)
    token = make_token(attacker, claims("runs:write"), jwk=attacker.public_jwk(), jku="https://evil.example/jwks")
    assert "signature does not verify" in refused(verifier, token)


def test_a_tampered_payload_is_refused(verifier, jwt_auth):
    token = jwt_auth.token("runs:read")
    assert verifier.verify(token)
    assert "signature does not verify" in refused(verifier, tamper(token, scope="runs:read runs:write"))


def test_a_tampered_signature_is_refused(verifier, jwt_auth):
    header, payload, signature = jwt_auth.token("runs:read", alg="RS256").split(".")
    flipped = b64url(bytes([signature.encode()[0] ^ 1]) + b"x" * 10)
    assert refused(verifier, f"{header}.{payload}.{flipped}")


@pytest.mark.parametrize("kid", ["no-such-key", DROP, 7, ""])
def test_unknown_or_missing_kids_are_refused(verifier, jwt_auth, kid):
    token = make_token(jwt_auth.keys["ES256"], claims("runs:write"), kid=kid)
    detail = refused(verifier, token)
    assert "unknown kid" in detail or "no 'kid'" in detail


@pytest.mark.parametrize("crit", [["exp"], ["flwd-ext"], ["b64"], "nope"])
def test_critical_header_parameters_are_refused(verifier, jwt_auth, crit):
    token = make_token(jwt_auth.keys["ES256"], claims("runs:write"), crit=crit, **{"flwd-ext": 1})
    assert "'crit'" in refused(verifier, token)


@pytest.mark.parametrize(
    "token",
    [
        "abc",
        "a.b",
        "a.b.c.d",
        "!!!.e30.",
        b64url(b"[1]") + ".e30.",
        b64url(b"{") + ".e30.",
        "eyJhbGciOiJFUzI1NiJ9..",
        encode({"alg": "ES256", "kid": "test-es256"}, b"[1,2]") + ".AA",
    ],
)
def test_malformed_tokens_are_refused_without_exception_text(verifier, token):
    detail = refused(verifier, token)
    assert "Error" not in detail and "Traceback" not in detail


def test_a_payload_that_is_not_a_claims_object_is_refused(verifier, jwt_auth):
    key = jwt_auth.keys["EdDSA"]
    signing_input = encode({"alg": "EdDSA", "kid": key.kid}, b"[1,2]")
    token = f"{signing_input}.{b64url(key.sign(signing_input.encode()))}"
    assert "not a JSON object" in refused(verifier, token)


# -- scopes --------------------------------------------------------------------


@pytest.mark.parametrize(
    "claim_set,granted",
    [
        ({"scope": "runs:read runs:write"}, True),
        ({"scp": ["runs:write"]}, True),
        ({"scp": "runs:write"}, True),
        ({"scp": "jobs:read  runs:write"}, True),
        ({"scope": "jobs:read", "scp": ["runs:write"]}, True),
        ({"scope": "runs:writeX"}, False),
        ({"scope": "runs:write:all"}, False),
        ({"scope": "RUNS:WRITE"}, False),
        ({"scp": ["runs:read runs:write"]}, False),  # a list item is one whole scope
        ({"scope": ""}, False),
        ({}, False),
    ],
)
def test_scopes_come_from_scope_or_scp_compared_as_whole_tokens(claim_set, granted):
    assert ("runs:write" in scopes_of(claim_set)) is granted


# RFC 6749 section 3.3: scopes are separated by U+0020 only; any other whitespace is part of one scope.
NOT_SEPARATORS = ("\u00a0", "\u3000", "\u2028", "\t", "\n", "\x1c", "\x85")


@pytest.mark.parametrize("claim", ["scope", "scp"])
@pytest.mark.parametrize("separator", NOT_SEPARATORS, ids=repr)
def test_only_a_space_separates_scopes(claim, separator):
    scopes = scopes_of({claim: f"jobs:read{separator}runs:write"})
    assert scopes == {f"jobs:read{separator}runs:write"}
    assert "runs:write" not in scopes and "jobs:read" not in scopes


@pytest.mark.parametrize("claim", ["scope", "scp"])
def test_empty_parts_between_spaces_are_no_scope(claim):
    assert scopes_of({claim: " jobs:read   runs:write "}) == {"jobs:read", "runs:write"}


def test_scopes_reach_the_principal_from_scp(verifier, jwt_auth):
    token = make_token(jwt_auth.keys["RS256"], claims(None, scp=["jobs:read", "runs:read"]))
    assert verifier.verify(token).scopes == {"jobs:read", "runs:read"}


# -- the JWKS file -------------------------------------------------------------


UNUSABLE = [
    ({"kty": "oct", "kid": "h", "k": "c2VjcmV0"}, "symmetric"),
    ({"kid": "p", **new_key("EdDSA").public_jwk(), "d": "AAAA"}, "private key material"),
    (new_key("RS256", kid="small", rsa_bits=1024).public_jwk(), "at least 2048"),
    ({**new_key("ES256").public_jwk(), "kid": "p384", "crv": "P-384", "alg": DROP}, "unsupported key type"),
    ({**new_key("ES256").public_jwk(), "kid": DROP}, "needs a 'kid'"),
    ({**new_key("RS256").public_jwk(), "kid": "rs512", "alg": "RS512"}, "RS256 only"),
    ({**new_key("ES256").public_jwk(), "kid": "enc", "use": "enc"}, "not 'sig'"),
    ({**new_key("ES256").public_jwk(), "kid": "ops", "key_ops": ["encrypt"]}, "'key_ops'"),
    ({**new_key("ES256").public_jwk(), "kid": "bad-point", "x": b64url(b"\x01" * 32)}, "not a valid ES256 public key"),
    ("not-an-object", "expected a JSON object"),
]


def _clean(jwk):
    return {k: v for k, v in jwk.items() if v is not DROP} if isinstance(jwk, dict) else jwk


@pytest.mark.parametrize("jwk,reason", UNUSABLE, ids=[r for _, r in UNUSABLE])
def test_a_jwks_with_only_unusable_keys_fails_start_up_saying_why(tmp_path, jwk, reason):
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps({"keys": [_clean(jwk)]}))
    with pytest.raises(ConfigError) as caught:
        TokenVerifier(AuthSettings(issuer=ISSUER, audience=AUDIENCE, jwk_file=str(path))).load()
    assert caught.value.key == "auth.jwk_file"
    assert "no usable key" in caught.value.detail and reason in caught.value.detail


def test_unusable_keys_are_skipped_next_to_usable_ones(tmp_path, jwt_auth):
    document = {"keys": [_clean(jwk) for jwk, _ in UNUSABLE] + [jwt_auth.keys["EdDSA"].public_jwk()]}
    keyset = parse_jwks(json.dumps(document))
    assert list(keyset.keys) == [jwt_auth.keys["EdDSA"].kid]
    assert len(keyset.skipped) == len(UNUSABLE)


def test_a_kid_listed_twice_is_not_used(tmp_path):
    a, b = new_key("ES256", kid="same"), new_key("EdDSA", kid="same")
    keyset = parse_jwks(json.dumps({"keys": [a.public_jwk(), b.public_jwk()]}))
    assert keyset.keys == {} and "more than once" in keyset.skipped[0]


@pytest.mark.parametrize(
    "content,message",
    [
        ("{not json", "not valid JSON"),
        ('{"keys": {}}', '{"keys": [...]}'),
        ('{"keys": []}', "the 'keys' list is empty"),
    ],
)
def test_a_broken_jwks_file_fails_start_up(tmp_path, content, message):
    path = tmp_path / "jwks.json"
    path.write_text(content)
    with pytest.raises(ConfigError) as caught:
        TokenVerifier(AuthSettings(issuer=ISSUER, audience=AUDIENCE, jwk_file=str(path))).load()
    assert message in caught.value.detail


def test_a_missing_jwks_file_fails_start_up(tmp_path):
    with pytest.raises(ConfigError) as caught:
        TokenVerifier(AuthSettings(issuer=ISSUER, audience=AUDIENCE, jwk_file=str(tmp_path / "nope.json"))).load()
    assert "cannot read" in caught.value.detail and "nope.json" in caught.value.detail


def test_rotation_new_kid_works_and_removed_kid_stops_without_a_new_verifier(verifier, jwt_auth):
    old = jwt_auth.keys["ES256"]
    old_token = jwt_auth.token("runs:read")
    assert verifier.verify(old_token)
    new = new_key("ES256", kid="rotated-in")
    write_jwks(jwt_auth.jwks_path, new, jwt_auth.keys["RS256"])
    assert verifier.verify(make_token(new, claims("runs:read"))).scopes == {"runs:read"}
    assert "unknown kid" in refused(verifier, old_token)  # cached before, dropped with the old key set
    assert old.kid not in verifier.kids


def test_a_file_rewritten_in_place_is_picked_up(verifier, jwt_auth):
    token = jwt_auth.token("runs:read", alg="EdDSA")
    assert verifier.verify(token)
    jwt_auth.jwks_path.write_text(json.dumps({"keys": [jwt_auth.keys["RS256"].public_jwk()]}))  # same inode
    assert "unknown kid" in refused(verifier, token)


def test_an_unreadable_file_keeps_the_last_good_keys(verifier, jwt_auth, caplog):
    token = jwt_auth.token("runs:read")
    jwt_auth.jwks_path.write_text('{"keys": [')  # a half-written file
    with caplog.at_level(logging.ERROR, "flwd.auth"):
        assert verifier.verify(token)
    assert "keeping the previous keys" in caplog.text
    jwt_auth.jwks_path.unlink()
    assert verifier.verify(token)


def test_a_file_that_lists_no_usable_key_refuses_every_token(verifier, jwt_auth, caplog):
    token = jwt_auth.token("runs:read")
    assert verifier.verify(token)
    with caplog.at_level(logging.ERROR, "flwd.auth"):
        write_jwks(jwt_auth.jwks_path)
        assert "unknown kid" in refused(verifier, token)
    assert "no usable key" in caplog.text


def test_a_flood_of_unknown_kids_rereads_the_file_at_most_once_per_interval(jwt_auth):
    clock = [1000.0]
    write_jwks(jwt_auth.jwks_path, *jwt_auth.keys.values(), age=60)  # not racily fresh: no re-reads for that
    v = TokenVerifier(settings_for(jwt_auth), monotonic=lambda: clock[0], reload_interval=10)
    v.load()
    stranger = new_key("ES256", kid="stranger")
    reads = v.reads
    for _ in range(200):
        refused(v, make_token(stranger, claims("runs:read")))
    assert v.reads == reads + 1
    clock[0] += 10
    for _ in range(50):
        refused(v, make_token(stranger, claims("runs:read")))
    assert v.reads == reads + 2


def test_an_unknown_kid_rereads_the_file_and_finds_a_new_key(jwt_auth):
    write_jwks(jwt_auth.jwks_path, *jwt_auth.keys.values(), age=60)
    v = TokenVerifier(settings_for(jwt_auth), reload_interval=0)
    v.load()
    newcomer = new_key("EdDSA", kid="newcomer")
    write_jwks(jwt_auth.jwks_path, newcomer, age=60)
    assert v.verify(make_token(newcomer, claims("jobs:read")))


def test_a_freshly_written_file_is_reread_until_its_mtime_is_safely_old(jwt_auth):
    # mtimes are coarse: a second write in the same tick, same size and inode, would not change them
    v = TokenVerifier(settings_for(jwt_auth))
    v.load()
    reads = v.reads
    token = jwt_auth.token("runs:read")
    v.verify(token)
    v.verify(token)
    assert v.reads == reads + 2
    write_jwks(jwt_auth.jwks_path, *jwt_auth.keys.values(), age=60)
    v.verify(token)
    reads = v.reads
    v.verify(token)
    assert v.reads == reads


# -- the cache of verified tokens ----------------------------------------------


def test_a_token_verified_while_the_keys_changed_is_not_cached(jwt_auth):
    token = jwt_auth.token("runs:read")
    rotated = []

    def clock() -> float:
        if not rotated:  # the key set changes between the signature check and the cache insert
            rotated.append(True)
            write_jwks(jwt_auth.jwks_path, jwt_auth.keys["RS256"])
            v.refresh()
        return time.time()

    v = TokenVerifier(settings_for(jwt_auth), clock=clock)
    v.load()
    assert v.verify(token)
    assert v.cached_tokens == 0
    assert "unknown kid" in refused(v, token)


def test_a_cached_token_still_expires_with_its_exp(jwt_auth):
    clock = [time.time()]
    v = TokenVerifier(settings_for(jwt_auth, leeway=5), clock=lambda: clock[0])
    token = jwt_auth.token("runs:read", exp=int(clock[0]) + 60)
    assert v.verify(token) and v.verify(token)
    assert v.cached_tokens == 1
    clock[0] += 64
    assert v.verify(token)  # within the leeway
    clock[0] += 2
    assert "expired" in refused(v, token)
    assert v.cached_tokens == 0


def test_the_cache_is_bounded(jwt_auth):
    v = TokenVerifier(settings_for(jwt_auth, token_cache_size=3))
    for i in range(10):
        v.verify(jwt_auth.token("runs:read", sub=f"user-{i}"))
    assert v.cached_tokens == 3


def test_a_cache_size_of_zero_caches_nothing(jwt_auth):
    v = TokenVerifier(settings_for(jwt_auth, token_cache_size=0))
    token = jwt_auth.token("runs:read")
    assert v.verify(token) == v.verify(token)
    assert v.cached_tokens == 0


def test_refused_tokens_are_not_cached(verifier, jwt_auth):
    refused(verifier, jwt_auth.token("runs:read", aud="other"))
    assert verifier.cached_tokens == 0


# -- configuration and start-up ------------------------------------------------


def test_no_auth_settings_means_no_verifier():
    assert token_verifier(AuthSettings()) is None


def test_partial_auth_settings_name_what_is_missing(tmp_path):
    with pytest.raises(ConfigError) as caught:
        token_verifier(AuthSettings(jwk_file=str(tmp_path / "jwks.json")))
    assert caught.value.key == "auth.issuer" and "auth.audience" in caught.value.detail


@pytest.mark.parametrize("algorithms", [("HS256",), ("RS256", "none"), ()])
def test_symmetric_or_unknown_algorithms_cannot_be_configured(jwt_auth, algorithms):
    with pytest.raises(ConfigError) as caught:
        TokenVerifier(settings_for(jwt_auth, algorithms=algorithms))
    assert caught.value.key == "auth.algorithms"


def test_a_key_whose_algorithm_is_not_configured_is_not_used(jwt_auth):
    v = TokenVerifier(settings_for(jwt_auth, algorithms=("EdDSA",)))
    assert v.load().keys.keys() == {jwt_auth.keys["EdDSA"].kid}
    assert "unknown kid" in refused(v, jwt_auth.token("runs:read", alg="RS256"))


def test_a_server_without_dev_and_without_auth_refuses_to_start_saying_what_to_set(make_settings):
    with pytest.raises(ConfigError) as caught:
        require_auth(make_settings())
    for name in ("auth.issuer", "auth.audience", "auth.jwk_file", "--dev"):
        assert name in caught.value.detail


def test_a_dev_server_needs_no_auth_settings(make_settings):
    require_auth(make_settings(dev=True))


def test_start_up_checks_the_jwks_file(make_settings, tmp_path):
    (tmp_path / "jwks.json").write_text('{"keys": []}')
    settings = make_settings(
        **{"auth.issuer": ISSUER, "auth.audience": AUDIENCE, "auth.jwk_file": str(tmp_path / "jwks.json")}
    )
    with pytest.raises(ConfigError) as caught:
        require_auth(settings)
    assert caught.value.key == "auth.jwk_file"


@pytest.mark.parametrize(
    "bind,warned",
    [
        ("0.0.0.0:8080", True),
        (":8080", True),
        ("192.0.2.10:8080", True),
        ("[::]:8080", True),
        ("127.0.0.1:8080", False),
        ("localhost:8080", False),
        ("[::1]:8080", False),
    ],
)
def test_dev_on_a_non_loopback_address_warns_loudly(caplog, bind, warned):
    settings = load_settings(None, {"dev": True, "bind": bind}, environ={})
    with caplog.at_level(logging.WARNING, "flwd.serve"):
        warn_if_exposed(settings)
    warnings = [r for r in caplog.records if "dev-token" in r.getMessage()]
    assert len(warnings) == (3 if warned else 0)
    if warned:
        assert bind in warnings[0].getMessage()


def test_no_warning_without_dev(caplog):
    with caplog.at_level(logging.WARNING, "flwd.serve"):
        warn_if_exposed(load_settings(None, {"bind": "0.0.0.0:8080"}, environ={}))
    assert not caplog.records


# -- the authenticator and the Authorization header ----------------------------


def test_dev_token_is_refused_without_dev(verifier):
    with pytest.raises(Unauthenticated) as caught:
        Authenticator(False, verifier).authenticate("Bearer dev-token")
    assert "--dev" in caught.value.detail
    with pytest.raises(Unauthenticated):
        Authenticator(False, None).authenticate("Bearer dev-token")


def test_dev_token_is_accepted_with_dev_and_jwts_still_verify(verifier, jwt_auth):
    auth = Authenticator(True, verifier)
    assert auth.authenticate("Bearer dev-token").subject == "dev"
    assert auth.authenticate("Bearer " + jwt_auth.token("jobs:read", sub="carol")).subject == "carol"


def test_dev_approver_is_a_second_dev_subject_with_the_same_scopes_only_under_dev(verifier):
    """Two dev subjects, so a run submitted with one can be approved with the other (two-person rule)."""
    auth = Authenticator(True, verifier)
    dev, approver = auth.authenticate("Bearer dev-token"), auth.authenticate("Bearer dev-approver")
    assert approver.subject == "dev-approver" != dev.subject and approver.scopes == dev.scopes
    assert "runs:approve" in approver.scopes
    with pytest.raises(Unauthenticated) as caught:
        Authenticator(False, verifier).authenticate("Bearer dev-approver")
    assert "dev-approver is accepted only by a server started with --dev" in caught.value.detail


@pytest.mark.parametrize(
    "header,error",
    [
        (None, None),
        ("", None),
        ("Basic YWxpY2U6cHc=", None),
        ("Bearer", "invalid_token"),
        ("Bearer a b", "invalid_token"),
        ("Bearer " + "a" * 9000, "invalid_token"),
    ],
)
def test_the_authorization_header_is_parsed_per_rfc_6750(header, error):
    with pytest.raises(Unauthenticated) as caught:
        bearer_token(header)
    assert caught.value.error == error and caught.value.status == 401


def test_the_bearer_scheme_is_case_insensitive():
    assert bearer_token("bearer abc.def.ghi") == "abc.def.ghi"


def test_the_token_modules_do_not_import_flask():
    code = "import sys, flwd_server.auth.tokens, flwd_server.auth.jwks, flwd_server.auth.keys, flwd_server.auth.bearer; sys.exit('flask' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], timeout=60).returncode == 0


def test_b64url_helper_matches_the_rfc_example():
    # RFC 7515 appendix C: base64url without padding.
    assert b64url(bytes([3, 236, 255, 224, 193])) == "A-z_4ME"
    assert b64url_json({}) == "e30"


def test_the_hand_built_es256_signature_is_raw_r_and_s(jwt_auth):
    token = jwt_auth.token("runs:read", alg="ES256")
    assert len(token.split(".")[2]) == 86  # 64 bytes, not DER


def test_the_test_keys_write_a_readable_jwks(jwt_auth, tmp_path: Path):
    assert set(parse_jwks(jwt_auth.jwks_path.read_text()).keys) == {k.kid for k in jwt_auth.keys.values()}
