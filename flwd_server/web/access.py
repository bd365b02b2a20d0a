"""Authentication, the scope each route declares, development CORS and the development Host check.

Every view carries an :func:`~flwd_server.web.operations.operation`
declaration, whose scope (or ``PUBLIC``) the hook here enforces; the OpenAPI
document reads the same declaration.  A view without one is refused (fail
closed), and a test walks the URL map so that no route can be added without one.

Under ``--dev`` anyone may use ``dev-token``, so the server must not be reachable from a
web page that rebinds its DNS name to 127.0.0.1 (DNS rebinding): such a page's requests
carry its own name in ``Host``.  A ``--dev`` server answers only loopback hosts and those
in ``dev_allowed_hosts``; everything else, ``/healthz`` included, is a 421.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Collection

from flask import Flask, Response, current_app, g, request

from ..config import HOST_RE
from ..errors import MisdirectedRequest, ScopeMissing, Unauthenticated
from ..models import Principal
from .operations import AUTHENTICATED, PUBLIC, declared_operation

DEV_ORIGIN_RE = re.compile(r"http://(localhost|127\.0\.0\.1|\[::1\])(:[0-9]{1,5})?")
CORS_ALLOW_HEADERS = "Authorization, Content-Type, Last-Event-ID, Idempotency-Key, X-Request-ID"
QUERY_TOKEN_NAMES = ("access_token", "token")
CORS_EXPOSE_HEADERS = "WWW-Authenticate, Location, Retry-After, X-Request-ID, Idempotent-Replayed"


def required_scope(app: Flask, endpoint: str | None) -> str | None:
    """The scope the hook enforces for an endpoint: a scope, ``PUBLIC``, ``AUTHENTICATED`` or None (undeclared: refused)."""
    declared = declared_operation(app, endpoint)
    return declared.scope if declared else None


def principal() -> Principal:
    return g.principal


def _dev_origin() -> str | None:
    origin = request.headers.get("Origin")
    if origin and current_app.config["FLWD_DEV"] and DEV_ORIGIN_RE.fullmatch(origin):
        return origin
    return None


def dev_host_allowed(host: str | None, allowed: Collection[str]) -> bool:
    """Whether a ``--dev`` server answers this ``Host``: localhost, 127.0.0.0/8, [::1], or a name in ``allowed``.

    ``allowed`` holds lowercase ``NAME`` (any port) or ``NAME:PORT`` entries.  No Host
    at all (HTTP/1.0) is refused: nothing says which name the client meant.
    """
    if not host:
        return False
    host = host.lower()
    match = HOST_RE.fullmatch(host)
    if not match:
        return False
    name = match.group("v6") or match.group("name")
    bare = host[: match.start("port") - 1] if match.group("port") else host
    if name == "localhost" or host in allowed or bare in allowed:
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def check_dev_host() -> None:
    """Under ``--dev``, refuse a request for a Host this server does not answer (before anything else happens)."""
    if not current_app.config["FLWD_DEV"]:
        return
    host = request.headers.get("Host")  # the header itself: werkzeug would fall back to the bound address
    if dev_host_allowed(host, current_app.config["FLWD_DEV_ALLOWED_HOSTS"]):
        return
    what = f"the Host {host!r} is not" if host else "a request without a Host header is not"
    raise MisdirectedRequest(
        f"{what} served by this --dev server: it answers localhost, 127.0.0.0/8 and [::1] (any port) and the "
        "names listed in the setting dev_allowed_hosts, so that a web page whose DNS name points at this "
        "machine (DNS rebinding) cannot use dev-token",
        host=host,
        setting="dev_allowed_hosts",
    )


def register(app: Flask) -> None:
    @app.before_request
    def authenticate() -> Response | None:
        check_dev_host()
        if request.method == "OPTIONS" and request.headers.get("Access-Control-Request-Method"):
            return _preflight()
        refuse_query_token()
        if request.endpoint is None:
            return None  # 404/405: the error handler answers
        declared = declared_operation(current_app, request.endpoint)
        scope = declared.scope if declared else None
        if scope == PUBLIC:
            return None
        engine = current_app.config["FLWD_ENGINE"]
        ticket = request.args.get("ticket")
        if (
            ticket is not None
            and declared is not None
            and declared.accepts_ticket
            and not request.headers.get("Authorization")
        ):
            g.principal = engine.redeem_stream_ticket(ticket, (request.view_args or {}).get("run_id"))
        else:
            g.principal = engine.authenticator.authenticate(request.headers.get("Authorization"))
        if scope == AUTHENTICATED:
            return None  # any valid token: authenticate() raised for none or a bad one
        if scope is None or not g.principal.may_use(scope):
            raise ScopeMissing(scope or "(undeclared)")
        return None

    @app.after_request
    def add_cors(response: Response) -> Response:
        origin = _dev_origin()
        if origin:
            response.headers["Access-Control-Allow-Origin"] = origin
            response.headers["Access-Control-Expose-Headers"] = CORS_EXPOSE_HEADERS
        response.vary.add("Origin")
        return response


def refuse_query_token() -> None:
    """A token in the URL ends up in logs and proxies: refused before anything happens.

    Alone it is an unsupported way to send credentials, a 401 without an
    error code (RFC 6750 section 3.1); next to an Authorization header it is
    two methods at once, a 400 ``invalid_request`` (section 2).
    """
    if not any(request.args.get(name) is not None for name in QUERY_TOKEN_NAMES):
        return
    if request.headers.get("Authorization"):
        raise Unauthenticated(
            "send the token once, in the Authorization header, not also in the query string", error="invalid_request"
        )
    raise Unauthenticated(
        "tokens are not accepted in the query string (URLs end up in logs); send 'Authorization: Bearer <token>'",
        error=None,
    )


def _preflight() -> Response:
    response = Response(status=204)
    origin = _dev_origin()
    if origin:
        response.headers["Access-Control-Allow-Origin"] = origin
        response.headers["Access-Control-Allow-Methods"] = "GET, POST, DELETE, OPTIONS"
        response.headers["Access-Control-Allow-Headers"] = CORS_ALLOW_HEADERS
        response.headers["Access-Control-Max-Age"] = "600"
    response.vary.add("Origin")
    return response
