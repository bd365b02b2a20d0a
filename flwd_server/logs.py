"""Structured logs: one JSON object per line, with the fields a pipeline can index."""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from urllib.parse import urlsplit, urlunsplit

# Attributes every LogRecord has; anything else came in through ``extra=`` and is a field.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}


_QUERY = re.compile(r"(/[^\s?\"']*)\?[^\s\"']+")
_BEARER = re.compile(r"(?i)\b(bearer\s+)[^\s\"',]+")


def redact(text: str) -> str:
    """Drop query strings and bearer tokens from a log text (a query may carry a secret)."""
    if "?" not in text and "bearer" not in text.lower():  # most lines: nothing to look for, two scans saved
        return text
    return _BEARER.sub(r"\1[redacted]", _QUERY.sub(r"\1?[redacted]", text))


def redact_url(url: str) -> str:
    """The URL with its password, if it has one, replaced by ``***`` (for output, logs and events)."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        scheme = url.split("://", 1)[0] if "://" in url else ""
        return f"{scheme}://(unparseable URL)" if scheme.isalpha() else "(unparseable URL)"
    if password is None:
        return url
    host = parts.netloc.rsplit("@", 1)[-1]
    return urlunsplit((parts.scheme, f"{parts.username or ''}:***@{host}", parts.path, parts.query, parts.fragment))


_second: tuple[int, str] = (-1, "")  # the last second formatted: lines come many to a second


def _time(record: logging.LogRecord) -> str:
    global _second
    whole = int(record.created)
    second, text = _second
    if second != whole:
        text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole))
        _second = (whole, text)
    return f"{text}.{int(record.msecs):03d}Z"


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {
            "time": _time(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": redact(record.getMessage()),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                out[key] = value
        if record.exc_info:
            out["exception"] = redact(self.formatException(record.exc_info))
        return json.dumps(out, default=str, ensure_ascii=False)


def configure_logging(level: str = "info", stream=None) -> None:
    """Send flwd's (and gunicorn's) logs to stderr as JSON lines."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    for existing in list(root.handlers):
        root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # What a record would learn and no line shows (the formatter writes none of it): its caller's file and
    # line (a stack walk per line), its thread and process names. The logging HOWTO's "Optimization" switches.
    logging._srcfile = None  # type: ignore[attr-defined]
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    for name in ("gunicorn.error", "gunicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers = []
        logger.propagate = True
