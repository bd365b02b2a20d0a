"""``flwd :keys`` and ``flwd :token``: keys a server accepts, tokens it verifies."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from flwd_cli.main import main
from flwd_server.auth.jwks import parse_jwks
from flwd_server.auth.tokens import TokenVerifier, unverified_header
from flwd_server.config import AuthSettings
from tests.fixtures.tokens import AUDIENCE, ISSUER, b64url, new_key


def flwd(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exited:
        main(list(argv))
    out, err = capsys.readouterr()
    return exited.value.code, out, err


def verifier(jwks: Path) -> TokenVerifier:
    v = TokenVerifier(AuthSettings(issuer=ISSUER, audience=AUDIENCE, jwk_file=str(jwks)))
    v.load()
    return v


MINT = ("--issuer", ISSUER, "--audience", AUDIENCE)


@pytest.mark.parametrize("alg", ["ES256", "RS256", "EdDSA"])
def test_a_new_key_signs_tokens_the_server_accepts(capsys, tmp_path, alg):
    code, out, _ = flwd(capsys, ":keys", "new", "--dir", str(tmp_path), "--alg", alg)
    assert code == 0
    kid = out.split()[1]
    pem = tmp_path / f"{kid}.pem"
    assert pem.stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "jwks.json").stat().st_mode & 0o777 == 0o644
    assert "PRIVATE KEY" in pem.read_text() and '"d"' not in (tmp_path / "jwks.json").read_text()

    code, token, err = flwd(
        capsys,
        ":token",
        "--key",
        str(pem),
        *MINT,
        "--subject",
        "ci",
        "--scope",
        "runs:read",
        "--scope",
        "runs:write jobs:read",
        "--lifetime",
        "15m",
    )
    assert code == 0, err
    principal = verifier(tmp_path / "jwks.json").verify(token.strip())
    assert principal.subject == "ci" and principal.scopes == {"runs:read", "runs:write", "jobs:read"}
    assert unverified_header(token.strip()) == {"alg": alg, "kid": kid, "typ": "JWT"}


def test_keys_accumulate_in_the_jwks_and_can_be_removed(capsys, tmp_path):
    flwd(capsys, ":keys", "new", "--dir", str(tmp_path), "--kid", "one")
    flwd(capsys, ":keys", "new", "--dir", str(tmp_path), "--kid", "two", "--alg", "EdDSA")
    jwks = tmp_path / "jwks.json"
    assert list(parse_jwks(jwks.read_text()).keys) == ["one", "two"]
    code, out, _ = flwd(capsys, ":keys", "list", str(jwks))
    assert code == 0 and "usable   one  ES256" in out and "usable   two  EdDSA" in out
    code, out, _ = flwd(capsys, ":keys", "remove", "one", "--jwks", str(jwks))
    assert code == 0 and "now holds: two" in out
    assert list(parse_jwks(jwks.read_text()).keys) == ["two"]


@pytest.mark.parametrize("kid", ["-9afQh1pgDRls1Mats2C", "--jwks-like", "-h"])
def test_a_kid_that_starts_with_a_dash_can_be_removed(capsys, tmp_path, kid):
    # A thumbprint kid starts with "-" one time in 64; "-9afQh..." once read as options holding -h (help).
    flwd(capsys, ":keys", "new", "--dir", str(tmp_path), "--kid", "kept")
    flwd(capsys, ":keys", "new", "--dir", str(tmp_path), f"--kid={kid}")
    jwks = tmp_path / "jwks.json"
    exact_option = kid == "-h"  # the one kid that is also an option: after "--", as POSIX has it
    code, out, err = flwd(capsys, ":keys", "remove", "--jwks", str(jwks), *(["--"] if exact_option else []), kid)
    assert code == 0, err
    assert f"removed {kid}; " in out
    assert list(parse_jwks(jwks.read_text()).keys) == ["kept"]
    code, out, _ = flwd(capsys, ":keys", "remove", "-h")  # alone, -h is still help
    assert code == 0 and "Drop KID from the JWKS" in out


def test_a_custom_kid_is_printed_in_the_mint_hint(capsys, tmp_path):
    _, out, _ = flwd(capsys, ":keys", "new", "--dir", str(tmp_path), "--kid", "prod-2026")
    assert "--kid prod-2026" in out
    code, token, _ = flwd(
        capsys,
        ":token",
        "--key",
        str(tmp_path / "prod-2026.pem"),
        "--kid",
        "prod-2026",
        *MINT,
        "--subject",
        "s",
        "--scope",
        "jobs:read",
    )
    assert verifier(tmp_path / "jwks.json").verify(token.strip()).subject == "s"


def test_a_second_key_with_the_same_kid_is_refused(capsys, tmp_path):
    flwd(capsys, ":keys", "new", "--dir", str(tmp_path), "--kid", "one")
    code, _, err = flwd(capsys, ":keys", "new", "--dir", str(tmp_path), "--kid", "one")
    assert code != 0 and "one.pem exists" in err
    code, _, err = flwd(
        capsys,
        ":keys",
        "new",
        "--dir",
        str(tmp_path / "elsewhere"),
        "--kid",
        "one",
        "--jwks",
        str(tmp_path / "jwks.json"),
    )
    assert code != 0 and "already holds a key with kid 'one'" in err
    assert not (tmp_path / "elsewhere" / "one.pem").exists()


def test_keys_list_says_why_a_jwks_is_unusable(capsys, tmp_path):
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps({"keys": [{"kty": "oct", "kid": "h", "k": "c2VjcmV0"}]}))
    code, out, err = flwd(capsys, ":keys", "list", str(jwks))
    assert code == 1 and "symmetric" in out and "no usable key" in err


def test_a_private_jwk_signs_with_its_own_kid(capsys, tmp_path):
    key = new_key("EdDSA", kid="jwk-kid")
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps({"keys": [key.public_jwk()]}))
    raw = key.private.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    private_jwk = tmp_path / "key.jwk"
    private_jwk.write_text(json.dumps({**key.public_jwk(), "d": b64url(raw)}))
    code, token, err = flwd(
        capsys, ":token", "--key", str(private_jwk), *MINT, "--subject", "jwk-user", "--scope", "export:read"
    )
    assert code == 0, err
    assert verifier(jwks).verify(token.strip()).scopes == {"export:read"}


def test_issuer_and_audience_come_from_the_server_config(capsys, tmp_path):
    flwd(capsys, ":keys", "new", "--dir", str(tmp_path), "--kid", "k")
    config = tmp_path / "server.yaml"
    config.write_text(f"auth:\n  issuer: '{ISSUER}'\n  audience: {AUDIENCE}\n  jwk_file: {tmp_path / 'jwks.json'}\n")
    code, out, err = flwd(
        capsys,
        ":token",
        "--key",
        str(tmp_path / "k.pem"),
        "--kid",
        "k",
        "--config",
        str(config),
        "--subject",
        "x",
        "--scope",
        "jobs:read",
        "--json",
    )
    assert code == 0, err
    minted = json.loads(out)
    assert minted["kid"] == "k" and minted["alg"] == "ES256" and minted["scopes"] == ["jobs:read"]
    assert verifier(tmp_path / "jwks.json").verify(minted["token"]).subject == "x"


@pytest.mark.parametrize(
    "args,message",
    [
        (("--scope", "runs:wirte"), "unknown scope runs:wirte"),
        (("--scope", "runs:write:bar"), "unknown scope runs:write:bar"),
        (("--scope", "jobs:read:bar:x"), "unknown scope jobs:read:bar:x"),
        (("--scope", "runs:write:Bar:x"), "unknown scope runs:write:Bar:x"),
        (("--scope", ""), "at least one scope"),
        (("--scope", "jobs:read", "--lifetime", "forever"), "expected a duration"),
        (("--scope", "jobs:read", "--lifetime", "400d"), "366 days"),
    ],
)
def test_bad_token_options_are_refused_clearly(capsys, tmp_path, args, message):
    flwd(capsys, ":keys", "new", "--dir", str(tmp_path), "--kid", "k")
    code, _, err = flwd(capsys, ":token", "--key", str(tmp_path / "k.pem"), *MINT, "--subject", "s", *args)
    assert code == 2 and message in err


def test_the_issuer_is_required(capsys, tmp_path):
    flwd(capsys, ":keys", "new", "--dir", str(tmp_path), "--kid", "k")
    code, _, err = flwd(capsys, ":token", "--key", str(tmp_path / "k.pem"), "--subject", "s", "--scope", "jobs:read")
    assert code == 2 and "--issuer" in err


def test_public_and_encrypted_keys_cannot_sign(capsys, tmp_path):
    key = new_key("ES256")
    public = tmp_path / "public.pem"
    public.write_bytes(key.public_pem())
    code, _, err = flwd(capsys, ":token", "--key", str(public), *MINT, "--subject", "s", "--scope", "jobs:read")
    assert code == 2 and "public key" in err
    encrypted = tmp_path / "encrypted.pem"
    encrypted.write_bytes(
        ec.generate_private_key(ec.SECP256R1()).private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.BestAvailableEncryption(b"pw")
        )
    )
    code, _, err = flwd(capsys, ":token", "--key", str(encrypted), *MINT, "--subject", "s", "--scope", "jobs:read")
    assert code == 2 and "encrypted" in err
    p384 = tmp_path / "p384.pem"
    p384.write_bytes(
        ec.generate_private_key(ec.SECP384R1()).private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    code, _, err = flwd(capsys, ":token", "--key", str(p384), *MINT, "--subject", "s", "--scope", "jobs:read")
    assert code == 2 and "P-256" in err


def test_a_job_narrowed_scope_is_minted_as_given(capsys, tmp_path):
    flwd(capsys, ":keys", "new", "--dir", str(tmp_path), "--kid", "k")
    code, out, err = flwd(
        capsys,
        ":token",
        "--key",
        str(tmp_path / "k.pem"),
        *MINT,
        "--subject",
        "s",
        "--scope",
        "runs:write:bar:sleepy runs:read:*:deploy-*",
        "--json",
    )
    assert code == 0, err
    assert json.loads(out)["scopes"] == ["runs:read:*:deploy-*", "runs:write:bar:sleepy"]
