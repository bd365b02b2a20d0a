"""One translator from errors to ``application/problem+json`` (RFC 9457)."""

from __future__ import annotations

import json
import logging

from flask import Flask, Response, request
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from ..errors import FlwdError, PayloadTooLarge, ScopeMissing, Unauthenticated, Unavailable

log = logging.getLogger("flwd.http")
PROBLEM_JSON = "application/problem+json"


def problem_response(problem: dict, headers: dict[str, str] | None = None) -> Response:
    body = json.dumps(problem, ensure_ascii=False)
    response = Response(body + "\n", status=problem["status"], mimetype=PROBLEM_JSON)
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response


def _quote(text: str) -> str:
    """An RFC 6750 auth-param value: printable ASCII without '"' and '\\'."""
    return "".join(c if " " <= c <= "~" and c not in '"\\' else "'" if c == '"' else "?" for c in text)


def www_authenticate(error: FlwdError) -> str:
    """The RFC 6750 challenge: no ``error`` when no credentials were sent."""
    parts = ['Bearer realm="flwd"']
    if isinstance(error, Unauthenticated) and error.error:
        parts.append(f'error="{error.error}"')
        parts.append(f'error_description="{_quote(error.detail)}"')
    elif isinstance(error, ScopeMissing):
        parts.append('error="insufficient_scope"')
        parts.append(f'error_description="{_quote(error.detail)}"')
        parts.append(f'scope="{_quote(error.scope)}"')
    return ", ".join(parts)


def flwd_error_response(error: FlwdError) -> Response:
    headers = {}
    if isinstance(error, (Unauthenticated, ScopeMissing)):
        headers["WWW-Authenticate"] = www_authenticate(error)
    if isinstance(error, Unavailable):
        headers["Retry-After"] = str(error.retry_after)
    return problem_response(error.to_problem(), headers)


def register(app: Flask) -> None:
    @app.errorhandler(FlwdError)
    def handle_flwd_error(error: FlwdError) -> Response:
        if error.status >= 500 and not isinstance(error, Unavailable):
            log.error("%s: %s", type(error).__name__, error.detail)
        return flwd_error_response(error)

    @app.errorhandler(RequestEntityTooLarge)
    def handle_too_large(error: RequestEntityTooLarge) -> Response:
        limit = app.config.get("MAX_CONTENT_LENGTH")
        return flwd_error_response(
            PayloadTooLarge(f"the request body is larger than {limit} bytes (limits.max_body_bytes)")
        )

    @app.errorhandler(HTTPException)
    def handle_http_exception(error: HTTPException) -> Response:
        # Start from werkzeug's own response so headers such as Allow (405) survive.
        response = error.get_response()
        problem = {
            "type": f"urn:flwd:error:http-{error.code}",
            "title": error.name,
            "status": error.code,
            "detail": _detail(error),
        }
        response.set_data(json.dumps(problem) + "\n")
        response.mimetype = PROBLEM_JSON
        return response

    @app.errorhandler(Exception)
    def handle_unexpected(error: Exception) -> Response:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return problem_response(
            {
                "type": "urn:flwd:error:internal-error",
                "title": "Internal error",
                "status": 500,
                "detail": "an unexpected error happened; it was logged on the server",
            }
        )


def _detail(error: HTTPException) -> str:
    if error.code == 404:
        return f"no such endpoint: {request.method} {request.path} (see /openapi.json)"
    if error.code == 405:
        allowed = error.get_response().headers.get("Allow", "")
        return f"{request.method} is not allowed on {request.path} (allowed: {allowed})"
    return error.description or error.name
