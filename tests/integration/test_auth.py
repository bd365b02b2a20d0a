"""Real authentication against a real ``flwd :serve`` started with an ``auth:`` config (no --dev).

Tokens are signed by hand with ``cryptography`` (tests/fixtures/tokens.py), not by the
server's own library.  One server (two gunicorn workers, so key rotation must reach both)
serves the whole module.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from flwd_server.config import load_settings
from flwd_server.engine import Engine
from flwd_server.web.app import create_app
from tests.fixtures.helpers import read_stream, require_tool, wait_until
from tests.fixtures.server import ServerProcess
from tests.fixtures.tokens import (
    ALL_SCOPES,
    AUDIENCE,
    DROP,
    ISSUER,
    JwtAuth,
    app_routes,
    claims,
    hs256_token,
    make_token,
    new_key,
    tamper,
    unsigned_token,
    write_jwks,
)

READ_WRITE = "jobs:read runs:read runs:write"
HELLO = {"job": "hello-world", "args": {"name": "Alice"}}
INVALID_TOKEN_RE = re.compile(
    r'^Bearer realm="flwd", error="invalid_token", error_description="[\x20\x21\x23-\x5b\x5d-\x7e]+"$'
)


@pytest.fixture(scope="module")
def auth_server(tmp_path_factory: pytest.TempPathFactory, module_jwt_auth: JwtAuth) -> Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp("auth-server")
    server = ServerProcess(
        root,
        {"auth": module_jwt_auth.config, "workers": 2, "threads": 8, "sse": {"heartbeat": 1.0}},
        dev=False,
        env=None,
    )
    server.start()
    yield server
    server.stop(timeout=30)


@pytest.fixture
def auth(module_jwt_auth: JwtAuth) -> Iterator[JwtAuth]:
    """The module's keys; the JWKS file is put back after a test that rotates it."""
    original = module_jwt_auth.jwks_path.read_bytes()
    yield module_jwt_auth
    if module_jwt_auth.jwks_path.read_bytes() != original:
        tmp = module_jwt_auth.jwks_path.with_name("restore.tmp")
        tmp.write_bytes(original)
        tmp.replace(module_jwt_auth.jwks_path)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def run_count(server: ServerProcess, auth: JwtAuth) -> int:
    response = requests.get(server.url + "/runs?limit=500", headers=auth.headers("runs:read"), timeout=10)
    assert response.status_code == 200, response.text
    return len(response.json()["runs"])


def assert_problem(response: requests.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"].startswith("application/problem+json")
    problem = response.json()
    assert problem["status"] == status
    for leak in ("Traceback", "Error:", "jwt.", "PyJWT", "Exception"):
        assert leak not in problem["detail"], problem["detail"]
    return problem


# -- accepted tokens -----------------------------------------------------------


@pytest.mark.parametrize("alg", ["RS256", "ES256", "EdDSA"])
def test_tokens_of_each_algorithm_are_accepted_and_their_subject_is_recorded(auth_server, auth, alg):
    subject = f"ci-runner-{alg.lower()}"
    token = auth.token(READ_WRITE, alg=alg, sub=subject)
    jobs = requests.get(auth_server.url + "/jobs", headers=bearer(token), timeout=10)
    assert jobs.status_code == 200 and "hello-world" in [j["name"] for j in jobs.json()["jobs"]]

    submitted = requests.post(auth_server.url + "/runs", json=HELLO, headers=bearer(token), timeout=10)
    assert submitted.status_code == 202, submitted.text
    run = submitted.json()["run"]
    assert run["submitted_by"] == subject

    events = read_stream(f"{auth_server.url}/runs/{run['id']}/events", bearer(token), timeout=30)
    by_type = {e["event"]: e["data"]["data"] for e in events}  # SSE data: the whole event; its data inside
    assert by_type["run.queued"]["submitted_by"] == subject
    assert by_type["run.started"]["submitted_by"] == subject
    assert by_type["run.finished"]["status"] == "succeeded"
    again = requests.get(f"{auth_server.url}/runs/{run['id']}", headers=bearer(token), timeout=10).json()["run"]
    assert again["submitted_by"] == subject


def test_scp_list_and_string_grant_scopes_like_scope(auth_server, auth):
    for scope_claims in ({"scp": ["jobs:read"]}, {"scp": "jobs:read"}):
        token = make_token(auth.keys["RS256"], claims(None, **scope_claims))
        assert requests.get(auth_server.url + "/jobs", headers=bearer(token), timeout=10).status_code == 200
    near_miss = auth.token("jobs:readX jobs:rea")
    assert requests.get(auth_server.url + "/jobs", headers=bearer(near_miss), timeout=10).status_code == 403


@pytest.mark.parametrize("separator", ["\u00a0", "\u3000", "\u2028", "\t", "\x1c"], ids=repr)
def test_only_a_space_separates_scopes_in_a_token(auth_server, auth, separator):
    """RFC 6749 section 3.3: anything but U+0020 is part of one (unknown) scope, which grants nothing."""
    for claim_set in ({"scope": f"jobs:read{separator}sources:read"}, {"scp": f"jobs:read{separator}sources:read"}):
        token = make_token(auth.keys["ES256"], claims(None, **claim_set))
        for path in ("/sources", "/jobs"):
            response = requests.get(auth_server.url + path, headers=bearer(token), timeout=10)
            assert response.status_code == 403, (claim_set, path, response.text)
            assert response.headers["Content-Type"] == "application/problem+json"


def test_scopes_separated_by_spaces_grant_each(auth_server, auth):
    for scope in ("jobs:read sources:read", "  jobs:read   sources:read "):
        for path in ("/sources", "/jobs"):
            response = requests.get(auth_server.url + path, headers=auth.headers(scope), timeout=10)
            assert response.status_code == 200, (scope, path, response.text)


# -- refused tokens: 401 and no side effect -----------------------------------


def _attacks() -> dict[str, Callable[[JwtAuth], str]]:
    now = int(time.time())
    rsa = "RS256"
    return {
        "alg none": lambda a: unsigned_token(claims(READ_WRITE), a.keys[rsa].kid),
        "missing alg": lambda a: unsigned_token(claims(READ_WRITE), a.keys[rsa].kid, alg=DROP),
        "HS256 keyed with the public PEM": lambda a: hs256_token(
            a.keys[rsa].public_pem(), claims(READ_WRITE), a.keys[rsa].kid
        ),
        "HS256 keyed with the public JWK": lambda a: hs256_token(
            json.dumps(a.keys[rsa].public_jwk()).encode(), claims(READ_WRITE), a.keys[rsa].kid
        ),
        "RS512 header on an RS256 key": lambda a: make_token(a.keys[rsa], claims(READ_WRITE), alg="RS512"),
        "wrong iss": lambda a: a.token(READ_WRITE, iss="https://evil.example.org/"),
        "iss with a suffix": lambda a: a.token(READ_WRITE, iss=ISSUER + ".evil.example"),
        "wrong aud": lambda a: a.token(READ_WRITE, aud="someone-else"),
        "aud list without ours": lambda a: a.token(READ_WRITE, aud=["a", "b"]),
        "missing aud": lambda a: a.token(READ_WRITE, aud=DROP),
        "missing exp": lambda a: a.token(READ_WRITE, exp=DROP),
        "expired": lambda a: a.token(READ_WRITE, iat=now - 3600, nbf=now - 3600, exp=now - 120),
        "not yet valid": lambda a: a.token(READ_WRITE, nbf=now + 600, exp=now + 1200),
        "issued in the future": lambda a: a.token(READ_WRITE, iat=now + 600, exp=now + 1200),
        "unknown kid": lambda a: make_token(new_key("ES256", kid="nobody-knows-me"), claims(READ_WRITE)),
        "signed by a stranger with a known kid": lambda a: make_token(
            new_key("ES256", kid=a.keys["ES256"].kid), claims(READ_WRITE)
        ),
        "tampered payload": lambda a: tamper(a.token("jobs:read"), scope=READ_WRITE),
        "unknown crit header": lambda a: make_token(
            a.keys["EdDSA"], claims(READ_WRITE), crit=["flwd-x"], **{"flwd-x": 1}
        ),
        "dev-token without --dev": lambda a: "dev-token",
        "garbage": lambda a: "not.a.jwt",
    }


ATTACKS = _attacks()


@pytest.mark.parametrize("name", list(ATTACKS))
def test_each_attack_is_refused_with_401_and_no_side_effect(auth_server, auth, name):
    before = run_count(auth_server, auth)
    response = requests.post(auth_server.url + "/runs", json=HELLO, headers=bearer(ATTACKS[name](auth)), timeout=10)
    problem = assert_problem(response, 401)
    assert INVALID_TOKEN_RE.match(response.headers["WWW-Authenticate"]), response.headers["WWW-Authenticate"]
    assert problem["type"] == "urn:flwd:error:unauthenticated"
    assert run_count(auth_server, auth) == before


def test_a_request_without_credentials_gets_a_challenge_without_an_error_code(auth_server, auth):
    for headers in ({}, {"Authorization": "Basic YWxpY2U6c2VjcmV0"}):
        response = requests.get(auth_server.url + "/runs", headers=headers, timeout=10)
        assert_problem(response, 401)
        assert response.headers["WWW-Authenticate"] == 'Bearer realm="flwd"'


def test_a_token_in_the_query_string_is_refused_with_401_and_no_side_effect(auth_server, auth):
    before = run_count(auth_server, auth)
    good = auth.token(READ_WRITE)
    for name in ("access_token", "token"):
        response = requests.post(f"{auth_server.url}/runs?{name}={good}", json=HELLO, timeout=10)
        problem = assert_problem(response, 401)
        assert "query string" in problem["detail"] and "Authorization: Bearer" in problem["detail"]
        assert response.headers["WWW-Authenticate"] == 'Bearer realm="flwd"'  # an unsupported method: no error code
    both = requests.post(f"{auth_server.url}/runs?access_token={good}", json=HELLO, headers=bearer(good), timeout=10)
    assert_problem(both, 400)
    assert both.headers["WWW-Authenticate"].startswith(
        'Bearer realm="flwd", error="invalid_request", error_description="'
    )
    assert run_count(auth_server, auth) == before
    assert good not in auth_server.logs()  # the access log records the path, never the query


def test_a_refused_token_is_logged_with_its_reason_but_never_the_token(auth_server, auth):
    token = auth.token("runs:read", aud="someone-else")
    assert requests.get(auth_server.url + "/runs", headers=bearer(token), timeout=10).status_code == 401

    def logged() -> bool:
        return "another audience" in auth_server.logs()

    wait_until(logged, 10, 0.05, "the refusal in the server log")
    assert token not in auth_server.logs() and token.split(".")[2] not in auth_server.logs()


# -- 403 on every protected route, walked from the URL map ----------------------


def protected_routes(tmp_path: Path) -> list[Any]:
    engine = Engine(load_settings(None, {"data_dir": str(tmp_path), "dev": True}, environ={}))
    try:
        # Routes that name a scope: not the public ones, nor /auth/me (any valid token).
        return [r for r in app_routes(create_app(engine=engine)) if r.scope not in ("(public)", "(authenticated)")]
    finally:
        engine.close(grace=0)


def test_a_token_lacking_the_routes_scope_gets_403_on_every_protected_route(auth_server, auth, tmp_path):
    routes = protected_routes(tmp_path)
    assert {r.scope for r in routes} >= {"jobs:read", "runs:read", "runs:write"}
    before = run_count(auth_server, auth)
    for route in routes:
        others = [s for s in ALL_SCOPES if s != route.scope]
        response = requests.request(
            route.method,
            auth_server.url + route.path,
            json=HELLO,
            headers=auth.headers(others, sub="lacking"),
            timeout=10,
        )
        problem = assert_problem(response, 403)
        assert problem["scope"] == route.scope and route.scope in problem["detail"], (route, problem)
        challenge = response.headers["WWW-Authenticate"]
        assert challenge.startswith('Bearer realm="flwd", error="insufficient_scope", error_description="'), challenge
        assert challenge.endswith(f', scope="{route.scope}"'), challenge
    assert run_count(auth_server, auth) == before


def test_auth_me_answers_any_valid_token_even_one_without_scopes_and_refuses_a_bad_one(auth_server, auth):
    url = auth_server.url + "/auth/me"
    bare = requests.get(url, headers=auth.headers("", sub="nobody"), timeout=10)
    assert bare.status_code == 200, bare.text
    assert bare.json() == {"subject": "nobody", "scopes": [], "dev": False}
    some = requests.get(url, headers=auth.headers("runs:read jobs:read", sub="reader"), timeout=10).json()
    assert some == {"subject": "reader", "scopes": ["jobs:read", "runs:read"], "dev": False}
    assert_problem(requests.get(url, timeout=10), 401)
    assert_problem(requests.get(url, headers={"Authorization": "Bearer dev-token"}, timeout=10), 401)  # not --dev
    expired = auth.headers(
        "runs:read", exp=int(time.time()) - 3600, iat=int(time.time()) - 7200, nbf=int(time.time()) - 7200
    )
    assert_problem(requests.get(url, headers=expired, timeout=10), 401)


def test_a_token_with_the_routes_scope_passes_the_check(auth_server, auth, tmp_path):
    for route in protected_routes(tmp_path):
        if route.method != "GET" or "events" in route.rule:
            continue  # reads only: nothing changes, no stream to hold open
        response = requests.get(auth_server.url + route.path, headers=auth.headers(route.scope), timeout=10)
        assert response.status_code not in (401, 403), (route, response.text)


# -- key rotation without a restart ---------------------------------------------


def status_everywhere(server: ServerProcess, token: str, tries: int = 8) -> set[int]:
    """Statuses of several fresh connections (spread over both workers)."""
    return {
        requests.get(server.url + "/jobs", headers={**bearer(token), "Connection": "close"}, timeout=10).status_code
        for _ in range(tries)
    }


def test_replacing_the_jwks_file_rotates_keys_without_a_restart(auth_server, auth):
    old_token = auth.token("jobs:read", alg="ES256")
    assert status_everywhere(auth_server, old_token) == {200}
    pid = auth_server.proc.pid
    workers = set(auth_server.worker_pids())

    newcomer = new_key("ES256", kid="rotated-2026")
    new_token = make_token(newcomer, claims("jobs:read"))
    assert status_everywhere(auth_server, new_token) == {401}
    write_jwks(auth.jwks_path, newcomer, auth.keys["RS256"], auth.keys["EdDSA"])  # ES256 key out, newcomer in

    assert status_everywhere(auth_server, new_token) == {200}
    assert status_everywhere(auth_server, old_token) == {401}
    assert status_everywhere(auth_server, auth.token("jobs:read", alg="RS256")) == {200}
    assert auth_server.proc.pid == pid and set(auth_server.worker_pids()) == workers  # no restart


def test_flwd_keys_and_token_commands_deploy_a_new_key_that_curl_can_use(auth_server, auth, tmp_path):
    curl = require_tool("curl")
    flwd = [sys.executable, "-m", "flwd_cli"]
    created = subprocess.run(
        [*flwd, ":keys", "new", "--dir", str(tmp_path / "keys"), "--alg", "EdDSA", "--jwks", str(auth.jwks_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert created.returncode == 0, created.stderr
    kid = re.search(r"kid:\s+(\S+)", created.stdout).group(1)
    pem = tmp_path / "keys" / f"{kid}.pem"
    assert pem.stat().st_mode & 0o777 == 0o600

    minted = subprocess.run(
        [
            *flwd,
            ":token",
            "--key",
            str(pem),
            "--config",
            str(auth_server.config_path),
            "--subject",
            "deploy-bot",
            "--scope",
            "jobs:read runs:read",
            "--lifetime",
            "10m",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert minted.returncode == 0, minted.stderr
    token = minted.stdout.strip()
    called = subprocess.run(
        [
            "bash",
            "-c",
            f'{curl} -s -o /dev/null -w "%{{http_code}}" -H "Authorization: Bearer $TOKEN" {auth_server.url}/jobs',
        ],
        capture_output=True,
        text=True,
        timeout=30,
        env={"TOKEN": token, "PATH": "/usr/bin:/bin"},
    )
    assert called.stdout == "200", called.stderr

    removed = subprocess.run(
        [*flwd, ":keys", "remove", kid, "--jwks", str(auth.jwks_path)], capture_output=True, text=True, timeout=60
    )
    assert removed.returncode == 0, removed.stderr
    assert status_everywhere(auth_server, token) == {401}


# -- start-up ------------------------------------------------------------------


def start_and_fail(root: Path, config: dict[str, Any]) -> str:
    server = ServerProcess(root, config, dev=False, env=None)
    server.start(wait=False)
    assert server.proc is not None
    code = server.proc.wait(60)
    output = server.logs()
    server.stop()
    assert code != 0, output
    return output


def test_a_server_without_dev_and_without_auth_config_refuses_to_start(tmp_path):
    output = start_and_fail(tmp_path, {})
    for name in ("auth.issuer", "auth.audience", "auth.jwk_file", "--dev", "docs/auth.rst"):
        assert name in output, output


def test_a_server_whose_jwks_has_no_usable_key_refuses_to_start(tmp_path):
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps({"keys": [{"kty": "oct", "kid": "shared", "k": "c2VjcmV0"}]}))
    output = start_and_fail(tmp_path, {"auth": {"issuer": ISSUER, "audience": AUDIENCE, "jwk_file": str(jwks)}})
    assert "auth.jwk_file" in output and "no usable key" in output and "symmetric" in output, output


def test_a_partial_auth_config_names_what_is_missing(tmp_path):
    output = start_and_fail(tmp_path, {"auth": {"issuer": ISSUER}})
    assert "auth.audience" in output and "auth.jwk_file" in output, output


# -- development CORS ---------------------------------------------------------------


def preflight(server: ServerProcess, origin: str, **headers: str) -> requests.Response:
    return requests.options(
        server.url + "/runs",
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type",
            **headers,
        },
        timeout=10,
    )


def test_dev_cors_allows_exact_localhost_origins_only(start_server):
    server = start_server({}, dev=True)
    for origin in ("http://localhost:5173", "http://127.0.0.1:5173", "http://localhost"):
        response = preflight(server, origin, **{"Access-Control-Request-Private-Network": "true"})
        assert response.status_code == 204
        assert response.headers["Access-Control-Allow-Origin"] == origin
        assert "Origin" in response.headers["Vary"]
        assert "authorization" in response.headers["Access-Control-Allow-Headers"].lower()
        assert "Access-Control-Allow-Private-Network" not in response.headers
        assert "Access-Control-Allow-Credentials" not in response.headers
    for origin in (
        "http://localhost.evil.com",
        "http://evil.localhost:5173",
        "null",
        "https://localhost:5173",
        "http://localhost:5173.evil.com",
        "http://LOCALHOST.evil.com",
    ):
        response = preflight(server, origin, **{"Access-Control-Request-Private-Network": "true"})
        assert "Access-Control-Allow-Origin" not in response.headers, origin
        assert "Access-Control-Allow-Private-Network" not in response.headers
        assert "Origin" in response.headers["Vary"]

    refused = requests.get(server.url + "/jobs", headers={"Origin": "http://localhost:5173"}, timeout=10)
    assert refused.status_code == 401
    assert refused.headers["Access-Control-Allow-Origin"] == "http://localhost:5173"
    assert "WWW-Authenticate" in refused.headers["Access-Control-Expose-Headers"]
    ok = requests.get(
        server.url + "/jobs", headers={"Origin": "http://localhost:5173", **bearer("dev-token")}, timeout=10
    )
    assert ok.status_code == 200 and ok.headers["Access-Control-Allow-Origin"] == "http://localhost:5173"


def test_without_dev_no_origin_is_allowed(auth_server, auth):
    response = preflight(auth_server, "http://localhost:5173")
    assert "Access-Control-Allow-Origin" not in response.headers
    got = requests.get(
        auth_server.url + "/jobs", headers={"Origin": "http://localhost:5173", **auth.headers("jobs:read")}, timeout=10
    )
    assert got.status_code == 200 and "Access-Control-Allow-Origin" not in got.headers
