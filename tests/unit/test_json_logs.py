"""JSON log lines: gunicorn's access line (when switched on) carries no query string or header,
and no message keeps a query string or a bearer token."""

from __future__ import annotations

import datetime
import json
import logging
from types import SimpleNamespace

from gunicorn.config import Config

from flwd_server.logs import JsonFormatter, redact, redact_url
from flwd_server.web.serving import JsonLogger


def test_gunicorns_access_line_is_json_with_the_path_only(capsys):
    cfg = Config()
    cfg.set("accesslog", "-")
    logger = JsonLogger(cfg)
    response = SimpleNamespace(
        status_code=201, status="201 CREATED", headers=[("X-Request-ID", "rid-1"), ("Content-Type", "application/json")]
    )
    request = SimpleNamespace(
        method="POST",
        path="/runs",
        query="token=secret-1",
        uri="/runs?token=secret-1",
        headers=[("AUTHORIZATION", "Bearer secret-2")],
    )
    logger.access(
        response,
        request,
        {"QUERY_STRING": "token=secret-1", "HTTP_AUTHORIZATION": "Bearer secret-2"},
        datetime.timedelta(milliseconds=12),
    )
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (line["method"], line["path"], line["status"], line["request_id"]) == ("POST", "/runs", 201, "rid-1")
    assert line["duration_ms"] == 12.0
    assert "secret" not in json.dumps(line)


def test_messages_lose_query_strings_and_bearer_tokens():
    assert redact("GET /runs/x/events?access_token=abc HTTP/1.1") == "GET /runs/x/events?[redacted] HTTP/1.1"
    assert (
        redact("Invalid header 'Authorization: Bearer eyJ.abc.def'")
        == "Invalid header 'Authorization: Bearer [redacted]'"
    )
    assert (
        redact("cloning https://git.example.org/repo.git?private_token=t0k into /srv")
        == "cloning https://git.example.org/repo.git?[redacted] into /srv"
    )
    assert redact("run 01abc queued: examples:hello-world by dev") == "run 01abc queued: examples:hello-world by dev"
    record = logging.LogRecord(
        "flwd.test", logging.INFO, __file__, 1, "bad request line %r", ("GET /x?secret=1",), None
    )
    assert "secret" not in JsonFormatter().format(record)


def test_passwords_in_urls_are_redacted_wherever_a_url_is_shown():
    """One function for git sources, the PostgreSQL URL and anything else that shows a URL."""
    assert redact_url("https://bob:s3cret@git.example.org/x.git") == "https://bob:***@git.example.org/x.git"
    assert redact_url("https://token@git.example.org/x.git") == "https://token@git.example.org/x.git"
    assert redact_url("git@host:x") == "git@host:x"
    assert redact_url("postgresql://flwd:s3cret@db:5432/flwd") == "postgresql://flwd:***@db:5432/flwd"
    assert redact_url("postgresql://flwd@db/flwd") == "postgresql://flwd@db/flwd"
    assert (
        redact_url("https://bob:p@ss@git.example.org/x.git") == "https://bob:***@git.example.org/x.git"
    )  # no part of it
    assert redact_url("https://bob:s3cret@[::1/x") == "https://(unparseable URL)"


def test_each_line_has_its_own_time_to_the_millisecond_across_seconds():
    formatter = JsonFormatter()
    times = []
    for created in (1796300000.125, 1796300000.75, 1796300001.5, 1796299999.25):
        record = logging.LogRecord("flwd.test", logging.INFO, __file__, 1, "BEARER-less line", (), None)
        record.created, record.msecs = created, (created - int(created)) * 1000
        times.append(json.loads(formatter.format(record))["time"])
    assert times == [
        "2026-12-03T12:13:20.125Z",
        "2026-12-03T12:13:20.750Z",
        "2026-12-03T12:13:21.500Z",
        "2026-12-03T12:13:19.250Z",
    ]
    assert redact("Authorization: BEARER abc") == "Authorization: BEARER [redacted]"  # any case is looked for
