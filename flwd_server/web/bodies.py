"""Request parsing: strict JSON bodies and query parameters, each problem named."""

from __future__ import annotations

import json
import re
from typing import Any

from flask import g, request
from werkzeug.exceptions import RequestEntityTooLarge

from ..errors import BadRequest, PayloadTooLarge, Unprocessable, UnsupportedMediaType
from ..models import Profile
from ..planner import PlanRequest, invalid_request

MAX_DEPTH = 32
ASCII_DIGITS = re.compile(r"[0-9]{1,20}")


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _depth(value: Any, level: int = 0) -> int:
    if level > MAX_DEPTH:
        return level
    if isinstance(value, dict):
        return max((_depth(v, level + 1) for v in value.values()), default=level + 1)
    if isinstance(value, list):
        return max((_depth(v, level + 1) for v in value), default=level + 1)
    return level


def _has_lone_surrogate(value: Any) -> bool:
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if not item.isascii() and any("\ud800" <= c <= "\udfff" for c in item):
                return True
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


def _raw_body() -> bytes:
    """The whole body, read once (cached) and at most ``limits.max_body_bytes``; 413 beyond."""
    limit = request.max_content_length
    if request.content_length is not None and limit is not None and request.content_length > limit:
        raise PayloadTooLarge(f"the request body is larger than {limit} bytes (limits.max_body_bytes)")
    try:
        raw = request.get_data(cache=True)
    except RequestEntityTooLarge:
        raise PayloadTooLarge(f"the request body is larger than {limit} bytes (limits.max_body_bytes)") from None
    if limit is not None and len(raw) >= limit:
        # A chunked body is cut at the limit without an error: reaching it means too large.
        raise PayloadTooLarge(f"the request body is larger than {limit} bytes (limits.max_body_bytes)")
    return raw


def has_body() -> bool:
    """Whether the request carries content: ``Content-Length`` alone misses a chunked body (it has none).

    A chunked body is read to see (at most the limit, 413 beyond) and stays cached for :func:`json_body`.
    """
    if request.content_length is not None:
        return request.content_length > 0
    return bool(_raw_body())


def no_body() -> None:
    """For operations that take no body: none or an empty one is fine; any content is a 415 naming what came.

    Called first in the view, so nothing happens and the answer does not depend on
    whether the run or source exists.  The body is read (at most the limit, 413
    beyond) rather than left on the connection, which could then serve no further
    request; ``Content-Length`` alone would miss a chunked body, which has none.
    """
    if request.content_length == 0:
        return
    raw = _raw_body()
    if not raw:
        return
    kind = request.mimetype or "no Content-Type"
    raise UnsupportedMediaType(
        f"{request.method} {request.path} takes no request body: send none, or an empty one (got {len(raw)} bytes, {kind})"
    )


def json_body(allowed: tuple[str, ...]) -> dict[str, Any]:
    """The request's JSON object; 415, 413, 400 or 422 with the reason otherwise."""
    data = json_object()
    unknown = unknown_fields(data, allowed)
    if unknown:
        names = ", ".join(e["field"] for e in unknown)
        raise Unprocessable(f"unknown fields: {names} (allowed: {', '.join(allowed)})", unknown)
    return data


def unknown_fields(data: dict[str, Any], allowed: tuple[str, ...]) -> list[dict[str, str]]:
    return [
        {"field": key, "message": f"unknown field (allowed: {', '.join(allowed)})"}
        for key in data
        if key not in allowed
    ]


def json_object() -> dict[str, Any]:
    """The request's JSON object, whatever its fields; 415, 413 or 400 with the reason otherwise."""
    if request.mimetype != "application/json":
        got = request.mimetype or "no Content-Type"
        raise UnsupportedMediaType(f"send the body as JSON with 'Content-Type: application/json' (got {got})")
    raw = _raw_body()
    try:
        data = json.loads(raw.decode("utf-8"), parse_constant=_reject_constant)
    except UnicodeDecodeError:
        raise BadRequest("the request body is not UTF-8") from None
    except RecursionError:
        raise BadRequest("the JSON body is nested too deeply") from None
    except ValueError as exc:
        raise BadRequest(f"the request body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise BadRequest("the request body must be a JSON object")
    if _depth(data) > MAX_DEPTH:
        raise BadRequest(f"the JSON body is nested deeper than {MAX_DEPTH} levels")
    if _has_lone_surrogate(data):
        # JSON lets "\ud800" through; such a string cannot be stored, logged or passed to a job.
        raise BadRequest(
            "the JSON body contains a lone UTF-16 surrogate (an escape from \\ud800 to \\udfff): not valid Unicode"
        )
    g.flwd_body = data
    return data


def plan_request(with_plan: bool) -> PlanRequest:
    """A plan or run body.  Unknown fields and bad values are collected, not raised one by one:
    when the job can still be looked up, the planner adds the arguments' problems and names
    them all in one 422 (``PlanRequest.problems``)."""
    fields = ("job", "args", "source", "profile") + (("plan", "callback") if with_plan else ())
    data = json_object()
    errors = unknown_fields(data, fields)
    job = data.get("job")
    if not isinstance(job, str) or not job.strip() or len(job) > 256:
        errors.append({"field": "job", "message": "required: the job's name (or source:name)"})
    args = data.get("args", {})
    if args is None:
        args = {}
    if not isinstance(args, dict):
        errors.append({"field": "args", "message": "expected an object of argument values"})
    source = data.get("source")
    if source is not None and (not isinstance(source, str) or not source):
        errors.append({"field": "source", "message": "expected a source name"})
    profile = data.get("profile")
    if profile is not None and profile not in [p.value for p in Profile]:
        errors.append({"field": "profile", "message": "expected one of secure, permissive, disabled"})
    plan = data.get("plan")
    if plan is not None and (not isinstance(plan, str) or not plan.startswith("sha256:") or len(plan) != 71):
        errors.append({"field": "plan", "message": "expected a plan digest (sha256:...) from POST /plans"})
    callback = _callback_url(data.get("callback"), errors) if "callback" in data and with_plan else None
    if any(e["field"] in ("job", "args", "source") for e in errors):
        raise Unprocessable(invalid_request(errors), errors)  # no job to look up: nothing more to name
    invalid = {e["field"] for e in errors}
    return PlanRequest(
        job=job.strip(),
        args=args,
        source=source,
        profile=Profile(profile) if profile and "profile" not in invalid else None,
        plan=plan if "plan" not in invalid else None,
        problems=tuple(errors),
        callback=callback,
    )


def _callback_url(value: Any, errors: list[dict[str, str]]) -> str | None:
    """``{"url": URL}``: its shape here; whether the server allows the URL is the engine's check (runs/callbacks.py)."""
    if value is None:
        return None
    if not isinstance(value, dict):
        errors.append({"field": "callback", "message": 'expected an object {"url": URL}'})
        return None
    errors.extend(
        {"field": f"callback.{key}", "message": "unknown field (allowed: url)"} for key in value if key != "url"
    )
    url = value.get("url")
    if not isinstance(url, str) or not url:
        errors.append({"field": "callback.url", "message": "required: the URL to POST the run to when it ends"})
        return None
    return url


def query_int(name: str, default: int, minimum: int, maximum: int, *, empty_is_absent: bool = False) -> int:
    raw = request.args.get(name)
    if raw is None or (raw == "" and empty_is_absent):
        return default
    # ASCII digits only: str.isdigit() also accepts '²' (int() then fails) and other scripts' digits.
    if not ASCII_DIGITS.fullmatch(raw) or not minimum <= int(raw) <= maximum:
        raise BadRequest(f"query parameter {name!r} must be an integer from {minimum} to {maximum}")
    return int(raw)


def query_choice(name: str, choices: tuple[str, ...]) -> str | None:
    raw = request.args.get(name)
    if raw is None or raw == "":
        return None
    if raw not in choices:
        raise BadRequest(f"query parameter {name!r} must be one of {', '.join(choices)}")
    return raw


def query_text(name: str, max_length: int = 256) -> str | None:
    raw = request.args.get(name)
    if raw is None or raw == "":
        return None
    if len(raw) > max_length or any(ord(c) < 32 for c in raw):
        raise BadRequest(f"query parameter {name!r} is not a valid name")
    return raw
