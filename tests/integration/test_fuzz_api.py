"""Property-based fuzzing of the whole HTTP API with schemathesis, from flwd's own /openapi.json.

A real ``flwd :serve`` (two gunicorn workers) answers every generated request:
schema-valid ones and schema-violating ones (wrong types, missing fields,
unknown query parameters, odd headers, undeclared methods).  schemathesis checks
each answer: never a 5xx, the status documented, the body matching the
documented schema and content type, a schema-violating request refused, the
token really required.  After the generated requests the module checks what
the server did: every run in the database was answered with a 202 (bad input
changed nothing), and its log has no traceback.

Not checked: ``positive_data_acceptance`` (a schema-valid request must get a 2xx).
flwd refuses on purpose what a static schema cannot express - a job's own
argument schema (422), a git URL that cannot be fetched (422), a time that is not
a date, an unknown source in a filter.

Event streams do not end by themselves: the server here closes every stream
after ``sse.max_duration`` (1 s), so each stream request is bounded; ``/events``
gets fewer examples because each positive one costs that second.
"""

from __future__ import annotations

import itertools
import re
import sqlite3
import time
from collections import Counter

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis import GenerationMode
from schemathesis.specs.openapi.checks import positive_data_acceptance

from flwd_server.web.app import routes_only_app
from flwd_server.web.openapi import openapi_document
from tests.fixtures.server import ServerProcess
from tests.fixtures.tokens import ALL_SCOPES, AUDIENCE, ISSUER, claims, make_token, new_key, write_jwks

pytestmark = pytest.mark.integration

EXAMPLES = {"dev": 140, "jwt": 30}  # per operation; the dev server alone gets well over 2,000 requests
STREAM_EXAMPLES = {"dev": 15, "jwt": 5}
MIN_REQUESTS = 2000
REAL_JOBS = ("hello-world", "noop", "fail", "stderr")  # quick ones: never `slow` or `print-lots`
SENT: Counter[str] = Counter()  # requests sent, per server kind
ACCEPTED_RUNS: dict[str, set[str]] = {"dev": set(), "jwt": set()}
RUN_IDS: dict[str, list[str]] = {"dev": [], "jwt": []}

# The document the servers below serve at /openapi.json (a test checks they are equal).  It is
# loaded at import, when no server runs yet; each server's fixture sets its URL and token.
SCHEMAS = {kind: schemathesis.openapi.from_dict(openapi_document(routes_only_app())) for kind in ("dev", "jwt")}
JWT_KEY = new_key("ES256", kid="fuzz-es256")
TOKENS = {"dev": "dev-token", "jwt": make_token(JWT_KEY, claims(ALL_SCOPES, exp=int(time.time()) + 86400))}


def _bearer(token: str) -> type:
    """An auth provider: schemathesis then knows the token is ours (its auth probes remove or spoil it)."""

    class Bearer:
        def get(self, case, context):
            return token

        def set(self, case, data, context):
            case.headers = {**(case.headers or {}), "Authorization": f"Bearer {data}"}

    return Bearer


for _kind, _schema in SCHEMAS.items():
    _schema.auth()(_bearer(TOKENS[_kind]))
    _schema.config.update(request_timeout=20)


FRAMING_HEADERS = frozenset(
    {"content-length", "transfer-encoding", "host", "connection", "expect", "te", "upgrade", "trailer"}
)


def _aim_at_real_things(kind: str):
    turn = itertools.count()

    def map_case(context, case):
        """Aim a third of the schema-valid cases at things that exist, so success paths get fuzzed too.

        Headers that frame the HTTP message (a generated ``Content-Length: v``) are left out:
        gunicorn's parser answers them with its own 400 before any route, which no operation of
        the document can describe; test_hostile_input.py tests them on purpose.
        """
        if case.headers:
            case.headers = {k: v for k, v in case.headers.items() if k.lower() not in FRAMING_HEADERS}
        if case.meta is None or case.meta.generation.mode is not GenerationMode.POSITIVE or next(turn) % 3:
            return case
        path = case.operation.path
        if "{run_id}" in path and RUN_IDS[kind]:
            case.path_parameters["run_id"] = RUN_IDS[kind][next(turn) % len(RUN_IDS[kind])]
        elif path.startswith("/sources/{name}"):
            case.path_parameters["name"] = "examples"
        elif path == "/jobs/{name}":
            case.path_parameters["name"] = REAL_JOBS[next(turn) % len(REAL_JOBS)]
        elif path in ("/runs", "/plans") and case.method == "POST" and isinstance(case.body, dict):
            case.body["job"] = REAL_JOBS[next(turn) % len(REAL_JOBS)]  # the args stay fuzzed: mostly a 422
            case.body.pop("source", None)
        return case

    return map_case


for _kind, _schema in SCHEMAS.items():
    _schema.hook(_aim_at_real_things(_kind))


def _start(kind: str, tmp_path_factory) -> ServerProcess:
    root = tmp_path_factory.mktemp(f"fuzz-{kind}")
    config = {
        "workers": 2,
        "threads": 16,
        "limits": {"max_concurrent_runs": 4},
        "sse": {"max_duration": 1, "heartbeat": 0.5},
    }
    if kind == "jwt":
        config["auth"] = {
            "issuer": ISSUER,
            "audience": AUDIENCE,
            "jwk_file": str(write_jwks(root / "jwks.json", JWT_KEY)),
        }
    server = ServerProcess(root, config, dev=kind == "dev", env=None).start()
    server.kind, server.token = kind, TOKENS[kind]
    # A few real runs, so that generated run ids sometimes name one (GET, cancel, events).
    for job in REAL_JOBS:
        args = {"name": "Fuzz"} if job == "hello-world" else {}
        RUN_IDS[kind].append(server.post("/runs", {"job": job, "args": args}, token=server.token).json()["run"]["id"])
    ACCEPTED_RUNS[kind].update(RUN_IDS[kind])
    return server


@pytest.fixture(scope="module")
def dev_server(tmp_path_factory):
    server = _start("dev", tmp_path_factory)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def jwt_server(tmp_path_factory):
    server = _start("jwt", tmp_path_factory)
    yield server
    server.stop()


FUZZ_SETTINGS = {"deadline": None, "database": None, "suppress_health_check": list(HealthCheck), "print_blob": True}


def _call(case, server: ServerProcess) -> None:
    response = case.call_and_validate(base_url=server.url, excluded_checks=[positive_data_acceptance])
    SENT[server.kind] += 1
    if case.method == "POST" and case.operation.path == "/runs" and response.status_code == 202:
        ACCEPTED_RUNS[server.kind].add(response.json()["run"]["id"])


def test_the_fuzzed_document_is_the_one_the_server_serves(dev_server):
    assert dev_server.get("/openapi.json").json() == openapi_document(routes_only_app())


@SCHEMAS["dev"].exclude(path_regex=r"events$").parametrize()
@settings(max_examples=EXAMPLES["dev"], **FUZZ_SETTINGS)
def test_every_generated_request_gets_a_documented_answer(case, dev_server):
    _call(case, dev_server)


@SCHEMAS["dev"].include(path_regex=r"events$").parametrize()
@settings(max_examples=STREAM_EXAMPLES["dev"], **FUZZ_SETTINGS)
def test_event_streams_answer_generated_requests_within_their_bound(case, dev_server):
    _call(case, dev_server)


@SCHEMAS["jwt"].exclude(path_regex=r"events$").parametrize()
@settings(max_examples=EXAMPLES["jwt"], **FUZZ_SETTINGS)
def test_with_jwt_auth_every_generated_request_gets_a_documented_answer(case, jwt_server):
    _call(case, jwt_server)


@SCHEMAS["jwt"].include(path_regex=r"events$").parametrize()
@settings(max_examples=STREAM_EXAMPLES["jwt"], **FUZZ_SETTINGS)
def test_with_jwt_auth_event_streams_answer_generated_requests(case, jwt_server):
    _call(case, jwt_server)


@pytest.mark.parametrize("kind", ["dev", "jwt"])
def test_the_fuzzer_sent_enough_requests_and_the_server_stayed_clean(kind, request):
    server = request.getfixturevalue(f"{kind}_server")
    print(f"fuzz: {SENT[kind]} generated requests to the {kind} server")
    assert SENT[kind] >= (MIN_REQUESTS if kind == "dev" else 1), (
        f"only {SENT[kind]} generated requests reached the {kind} server"
    )
    db = sqlite3.connect(f"file:{server.data_dir / 'flwd.db'}?mode=ro", uri=True)
    try:
        stored = {row[0] for row in db.execute("SELECT id FROM runs")}
    finally:
        db.close()
    assert stored == ACCEPTED_RUNS[kind]  # every run the database holds was answered 202: refused input wrote nothing
    logs = server.logs()
    assert not re.findall(r'"status": 5[0-9][0-9]', logs)  # no 5xx in the access lines either
    assert "Traceback" not in logs and "database is locked" not in logs
