"""Hostile input through a real server: nothing executes, nothing escapes, nothing answers 5xx.

Other modules cover bad JSON, 10 MB bodies, nesting bombs (test_runs_api.py), unsafe git
URLs and refs (test_sources.py) and token attacks (test_auth.py); the fuzzer
(test_fuzz_api.py) sends thousands of generated requests.  These are the targeted ones.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from tests.fixtures.server import ServerProcess

pytestmark = pytest.mark.integration

ECHO = """name: echo
args:
  text: {type: string, required: true}
  count: {type: integer, default: 1, minimum: 1, maximum: 3}
  ratio: {type: number, default: 1}
steps:
  - run: 'printf "%s\\n" "$FLWD_ARG_TEXT"'
"""


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile")
    (root / "src" / "jobs").mkdir(parents=True)
    (root / "src" / "jobs" / "echo.yaml").write_text(ECHO)
    (root / "markers").mkdir()
    config = {"workers": 2, "threads": 16, "sources": [{"type": "local", "name": "h", "path": str(root / "src")}]}
    server = ServerProcess(root, config, dev=True, env=None).start()
    server.markers = root / "markers"
    yield server
    server.stop()
    logs = server.logs()
    assert "Traceback" not in logs and '"status": 500' not in logs


def problem(response: requests.Response, *statuses: int) -> dict:
    assert response.status_code in statuses, (response.status_code, response.text[:300])
    assert response.headers["Content-Type"] == "application/problem+json"
    return response.json()


def output(server, run_id: str) -> list[str]:
    return [e["data"]["data"]["line"] for e in server.events(run_id) if e["event"] == "step.output"]


def run_count(server) -> int:
    return len(server.get("/runs?limit=500").json()["runs"])


def test_shell_metacharacters_and_newlines_in_args_are_data_never_code(hostile):
    m = hostile.markers
    values = [
        f"$(touch {m}/subst)",
        f"`touch {m}/backtick`",
        f"; touch {m}/semicolon",
        f"| touch {m}/pipe",
        f"&& touch {m}/and",
        f"x\ntouch {m}/newline",
        f"x\r\ntouch {m}/crlf",
        f"$((1+1)) ${{IFS}} $HOME ' \" \\ * ? ~ > {m}/redirect",
        f"-e $(touch {m}/dash)",
    ]
    runs = [(value, hostile.submit("echo", {"text": value})) for value in values]
    for value, run in runs:
        assert hostile.wait_finished(run["id"])["status"] == "succeeded"
        assert "\n".join(output(hostile, run["id"])) == value.replace("\r\n", "\n").replace(
            "\r", ""
        )  # printed verbatim
    assert list(m.iterdir()) == []  # no marker file: nothing was executed


@pytest.mark.parametrize(
    ("args", "field"),
    [
        ({"text": "x", "count": 10**30}, "args.count"),
        ({"text": "x", "count": 2**63}, "args.count"),
        ({"text": "x", "count": 1.5}, "args.count"),
        ({"text": "x", "count": True}, "args.count"),
        ({"text": "x", "ratio": "1e400"}, "args.ratio"),
        ({"text": "a\u0000b"}, "args.text"),
    ],
)
def test_huge_numbers_and_odd_values_are_422s_naming_the_field(hostile, args, field):
    before = run_count(hostile)
    body = problem(hostile.post("/runs", {"job": "echo", "args": args}), 422)
    assert field in json.dumps(body)
    assert run_count(hostile) == before


@pytest.mark.parametrize(
    "raw",
    [
        b'{"job": "echo", "args": {"text": "x", "ratio": 1e400}}',  # parses to infinity
        b'{"job": "echo", "args": {"text": "x", "count": ' + b"9" * 5000 + b"}}",  # beyond Python's int limit
        b'{"job": "echo", "args": {"text": "a\\ud800b"}}',  # a lone surrogate
        b'{"job": "\\udfff"}',
        b'{"job": "echo", "args": {"\\ud800": "x"}}',
    ],
    ids=["infinity", "5000 digits", "surrogate in a value", "surrogate as the job", "surrogate as a key"],
)
def test_numbers_and_strings_json_allows_but_nothing_can_hold_are_4xx(hostile, raw):
    before = run_count(hostile)
    for path in ("/plans", "/runs"):
        response = requests.post(
            hostile.url + path, data=raw, headers={**hostile.headers(), "Content-Type": "application/json"}, timeout=10
        )
        problem(response, 400, 422)
    assert run_count(hostile) == before


def test_rtl_overrides_and_other_unicode_stay_exactly_what_was_sent(hostile):
    text = "\u202egnp.exe \u200b\u200d\ufeff \U0001f600 \u00e9\u0301"  # (NUL is a 422, tested above)
    run = hostile.submit("echo", {"text": text})
    assert hostile.wait_finished(run["id"])["status"] == "succeeded"
    assert output(hostile, run["id"]) == [text]
    assert hostile.get(f"/runs/{run['id']}").json()["run"]["args"]["text"] == text


TRAVERSALS = [
    "../../etc/passwd",
    "..%2f..%2fetc%2fpasswd",
    "%2e%2e/%2e%2e/etc/passwd",
    "..%252f..%252fetc",
    "....//....//etc",
    "/etc/passwd",
    "%00",
    "..\\..\\etc",
]


@pytest.mark.parametrize("evil", TRAVERSALS)
def test_path_traversal_in_every_path_like_field_finds_nothing(hostile, evil):
    urls = [
        f"/runs/{evil}",
        f"/runs/{evil}/events",
        f"/jobs/{evil}",
        f"/jobs/h:{evil}",
        f"/sources/{evil}",
        f"/jobs?source={evil}",
        f"/runs?job={evil}&source={evil}",
        f"/export?job={evil}",
        f"/export?job=h:{evil}",
    ]
    for url in urls:
        response = requests.get(hostile.url + url, headers=hostile.headers(), timeout=10)
        assert response.status_code in (200, 400, 404, 405), (url, response.status_code)
        assert "root:" not in response.text and "/bin/sh" not in response.text, url
        if response.status_code == 200 and url.startswith("/export"):
            assert response.text.splitlines()[-1] == '{"record":"end","runs":0,"events":0,"artifacts":0}'
    for method, url in (
        ("post", f"/runs/{evil}/cancel"),
        ("post", f"/sources/{evil}/sync"),
        ("delete", f"/sources/{evil}"),
    ):
        response = getattr(requests, method)(hostile.url + url, headers=hostile.headers(), timeout=10)
        assert response.status_code in (400, 404, 405), (method, url, response.status_code)
    for body in (
        {"job": evil},
        {"job": "echo", "source": evil, "args": {"text": "x"}},
        {"job": f"{evil}:echo", "args": {"text": "x"}},
    ):
        problem(hostile.post("/runs", body), 404, 422)
    problem(hostile.post("/sources", {"type": "local", "name": evil, "path": "/tmp"}), 422)
    problem(hostile.post("/sources", {"type": "git", "name": "trav", "url": f"file:///{evil}"}), 422)


def test_oversized_headers_and_request_lines_are_refused_quickly_not_hung(hostile):
    started = time.monotonic()
    for headers in ({"X-Big": "a" * 20000}, {f"X-H{i}": "v" for i in range(150)}, {"Last-Event-ID": "1" * 20000}):
        try:
            response = requests.get(hostile.url + "/runs", headers={**hostile.headers(), **headers}, timeout=10)
            assert 400 <= response.status_code < 500, response.status_code
        except requests.ConnectionError:
            pass  # gunicorn may close the connection on a header it will not read: refused all the same
    response = requests.get(hostile.url + "/runs?job=" + "a" * 9000, headers=hostile.headers(), timeout=10)
    assert 400 <= response.status_code < 500
    assert time.monotonic() - started < 10
    assert hostile.get("/healthz").status_code == 200


@pytest.mark.parametrize(
    "forged", ["-1", "abc", "1e3", "0x10", "1.0", "+5", "\u00b2", "9" * 25, "18446744073709551616", "1" * 20000]
)
def test_forged_last_event_ids_over_http_are_400s(hostile, forged):
    run = hostile.submit("echo", {"text": "x"})
    for path in (f"/runs/{run['id']}/events", "/events"):
        headers = {**hostile.headers(), "Last-Event-ID": forged.encode("latin-1")}
        try:
            response = requests.get(hostile.url + path, headers=headers, timeout=10)
        except requests.ConnectionError:
            assert len(forged) > 16000  # beyond gunicorn's header limit: the connection is refused
            continue
        assert 400 <= response.status_code < 500, (forged, response.status_code)
        query = requests.get(hostile.url + path, params={"after": forged}, headers=hostile.headers(), timeout=10)
        assert 400 <= query.status_code < 500


def test_an_event_id_far_ahead_waits_for_new_events_and_a_finished_run_answers_204(hostile):
    run = hostile.submit("echo", {"text": "x"})
    hostile.wait_finished(run["id"])
    assert hostile.get(f"/runs/{run['id']}/events", headers={"Last-Event-ID": str(2**62)}).status_code == 204


def raw_request(port: int, head: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(head)
        chunks = []
        while True:
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                break
            if not chunk:
                break
            chunks.append(chunk)
            if b"\r\n\r\n" in b"".join(chunks):
                break
        return b"".join(chunks)


@pytest.mark.parametrize(
    "value",
    [
        b"abc\rInjected: yes",
        b"abc\nInjected: yes",
        b"abc\r\n Injected: folded",
        b"abc\x00def",
        b"abc\x7fdef",
        b"\xff\xfe",
    ],
)
def test_crlf_and_control_bytes_in_request_ids_and_idempotency_keys_never_reach_a_response_header(hostile, value):
    before = run_count(hostile)
    body = b'{"job": "echo", "args": {"text": "x"}}'
    for name in (b"X-Request-ID", b"Idempotency-Key"):
        head = (
            b"POST /runs HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer dev-token\r\nContent-Type: application/json\r\n"
            + name
            + b": "
            + value
            + b"\r\nContent-Length: "
            + str(len(body)).encode()
            + b"\r\nConnection: close\r\n\r\n"
            + body
        )
        answer = raw_request(hostile.port, head)
        status_line, _, rest = answer.partition(b"\r\n")
        headers = rest.split(b"\r\n\r\n", 1)[0].lower()
        assert b"injected" not in headers and b"\x00" not in headers and b"\x7f" not in headers
        assert status_line.split(b" ")[1] in (b"202", b"400"), (
            status_line
        )  # refused, or accepted with the value dropped
        if status_line.split(b" ")[1] == b"202":
            assert name == b"X-Request-ID"  # a request id that is not clean is replaced, never echoed
            request_id = [line for line in headers.split(b"\r\n") if line.startswith(b"x-request-id:")][0]
            assert value.lower() not in request_id
    assert run_count(hostile) - before <= 6


@pytest.mark.parametrize(
    "framing",
    [
        b"Content-Length: v\r\n",
        b"Content-Length: -5\r\n",
        b"Content-Length: 38\r\nContent-Length: 5\r\n",
        b"Content-Length: 38\r\nTransfer-Encoding: chunked\r\n",
        b"Transfer-Encoding: gzip, chunked, identity\r\n",
    ],
    ids=["not-a-number", "negative", "two-lengths", "length-and-chunked", "bad-coding"],
)
def test_a_request_whose_framing_is_malformed_is_a_400_and_changes_nothing(hostile, framing):
    """The request smuggling shapes: gunicorn's parser refuses them before flwd sees a request.

    The fuzzer leaves framing headers out (test_fuzz_api.py): this is where they are tested.
    """
    before = run_count(hostile)
    body = b'{"job": "echo", "args": {"text": "x"}}'
    for method, path in ((b"POST", b"/runs"), (b"DELETE", b"/sources/h")):
        head = (
            method
            + b" "
            + path
            + b" HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer dev-token\r\nContent-Type: application/json\r\n"
        )
        answer = raw_request(hostile.port, head + framing + b"Connection: close\r\n\r\n" + body)
        assert answer.split(b"\r\n", 1)[0].split(b" ")[1] == b"400", (method, answer[:200])
    assert run_count(hostile) == before
    assert [s["name"] for s in hostile.get("/sources").json()["sources"]] == ["examples", "h"]


def test_a_token_flood_gets_401s_while_the_api_stays_responsive(hostile):
    bad = ["garbage", "dev-token2", "eyJhbGciOiJub25lIn0.e30.", "a" * 4000, "Bearer", "é", "dev-tokén", "\u00ff" * 300]
    slowest = []
    stop = threading.Event()

    def probe():
        while not stop.is_set():
            started = time.monotonic()
            assert hostile.get("/healthz").status_code == 200
            slowest.append(time.monotonic() - started)

    def flood(i: int) -> int:
        session = requests.Session()
        token = bad[i % len(bad)] + str(i)
        try:
            return session.get(
                hostile.url + "/runs", headers={"Authorization": f"Bearer {token}".encode()}, timeout=10
            ).status_code
        finally:
            session.close()

    prober = threading.Thread(target=probe)
    prober.start()
    try:
        with ThreadPoolExecutor(16) as pool:
            statuses = list(pool.map(flood, range(3000)))
    finally:
        stop.set()
        prober.join()
    assert set(statuses) == {401}
    assert max(slowest) < 2.0, f"/healthz took {max(slowest):.2f}s during the flood"
    assert hostile.get("/runs?limit=1").status_code == 200
