"""The Flask application factory: no side effects at import, tests pass their own engine."""

from __future__ import annotations

import logging
import os
import re
import secrets
import time

from flask import Flask, Response, g, request
from werkzeug.middleware.proxy_fix import ProxyFix

from ..config import Settings, load_settings
from ..engine import Engine
from ..events.sse import StreamSlots
from ..metrics import SSE_CLIENTS
from . import (
    access,
    approvals_api,
    artifacts_api,
    jobs_api,
    ops_api,
    plans_api,
    problems,
    query_params,
    runs_api,
    sources_api,
    ui_api,
)

access_log = logging.getLogger("flwd.access")
REQUEST_ID_RE = re.compile(r"[A-Za-z0-9._:-]{1,128}")
# Every response: no MIME sniffing, and no Referer leaking a URL (a run id, a filter) to another site.
SECURITY_HEADERS = {"X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer"}
# The dashboard's too: its own files only (no inline script or style, nothing from elsewhere), never framed.
UI_SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; base-uri 'self'; form-action 'self'; "
    "frame-ancestors 'none'; object-src 'none'",
    "X-Frame-Options": "DENY",
}
BLUEPRINTS = (
    jobs_api.bp,
    plans_api.bp,
    runs_api.bp,
    approvals_api.bp,
    artifacts_api.bp,
    ops_api.bp,
    sources_api.bp,
    ui_api.bp,
)


def create_app(settings: Settings | None = None, engine: Engine | None = None) -> Flask:
    if engine is None:
        settings = settings or load_settings(os.environ.get("FLWD_CONFIG") or None)
        engine = Engine(settings)
    settings = engine.settings
    app = Flask("flwd_server", static_folder=None)  # no static files: every route is a declared API route
    app.config.update(
        FLWD_ENGINE=engine,
        FLWD_DEV=settings.dev,
        FLWD_DEV_ALLOWED_HOSTS=frozenset(settings.dev_allowed_hosts),
        FLWD_STREAM_SLOTS=StreamSlots(
            settings.sse_max_streams, on_change=lambda n: engine.metrics.set_process_gauge(SSE_CLIENTS, n)
        ),
        MAX_CONTENT_LENGTH=settings.limits.max_body_bytes,
        MAX_FORM_MEMORY_SIZE=settings.limits.max_body_bytes,
    )
    app.json.sort_keys = False  # type: ignore[attr-defined]
    problems.register(app)
    _register_request_ids(app)
    access.register(app)
    _register_security_headers(app)
    for blueprint in BLUEPRINTS:
        app.register_blueprint(blueprint)
    # After authentication (no token is a 401 whatever the query says), and after the
    # blueprints: the allowed parameters come from the document of the routes registered.
    query_params.register(app)
    _trust_proxies(app, settings.http.trusted_proxies)
    return app


def _trust_proxies(app: Flask, count: int) -> None:
    """Believe the X-Forwarded-* headers of ``count`` proxies: the client's address, scheme, host and the
    path prefix the proxy serves flwd under (``request.script_root``, so the dashboard's base and the
    index's links keep it). Here, not in the server: it holds under gunicorn and any other WSGI host."""
    if count:
        app.wsgi_app = ProxyFix(  # type: ignore[method-assign]
            app.wsgi_app, x_for=count, x_proto=count, x_host=count, x_port=0, x_prefix=count
        )


def routes_only_app() -> Flask:
    """The API's routes with no engine and no hooks: what the OpenAPI document describes."""
    app = Flask("flwd_server", static_folder=None)
    for blueprint in BLUEPRINTS:
        app.register_blueprint(blueprint)
    return app


def _register_security_headers(app: Flask) -> None:
    @app.after_request
    def add_security_headers(response: Response) -> Response:
        response.headers.update(SECURITY_HEADERS)
        if request.path == "/ui" or request.path.startswith("/ui/"):
            response.headers.update(UI_SECURITY_HEADERS)
        return response


def _register_request_ids(app: Flask) -> None:
    @app.before_request
    def start_request() -> None:
        incoming = request.headers.get("X-Request-ID", "")
        g.request_id = incoming if REQUEST_ID_RE.fullmatch(incoming) else secrets.token_hex(8)
        g.started = time.monotonic()
        app.config["FLWD_ENGINE"].start()

    @app.after_request
    def finish_request(response: Response) -> Response:
        request_id = getattr(g, "request_id", None) or secrets.token_hex(8)
        response.headers["X-Request-ID"] = request_id
        principal = getattr(g, "principal", None)
        access_log.info(
            "%s %s %s",
            request.method,
            request.path,
            response.status_code,
            extra={
                "event": "http.request",
                "request_id": request_id,
                "method": request.method,
                "path": request.path,  # never the query string: it may carry secrets
                "status": response.status_code,
                "duration_ms": round((time.monotonic() - g.get("started", time.monotonic())) * 1000, 3),
                "subject": principal.subject if principal else None,
                "remote": request.remote_addr,
            },
        )
        return response
