"""Every route declares its scope next to it; this walks the URL map so none can be added without one."""

from __future__ import annotations

import re

from flask import Response

from flwd_server.auth.bearer import SCOPES
from flwd_server.web.access import PUBLIC
from tests.fixtures.tokens import app_routes

# DESIGN.md, "HTTP API": (method, rule with parameters as {}) -> scope.  Routes added by other
# areas are checked against this table as soon as they exist.
DESIGN_SCOPES = {
    ("GET", "/jobs"): "jobs:read",
    ("GET", "/jobs/{}"): "jobs:read",
    ("POST", "/plans"): "jobs:read",
    ("POST", "/runs"): "runs:write",
    ("GET", "/runs"): "runs:read",
    ("GET", "/runs/{}"): "runs:read",
    ("POST", "/runs/{}/cancel"): "runs:write",
    ("GET", "/runs/{}/events"): "runs:read",
    ("GET", "/events"): "runs:read",
    ("POST", "/stream-tickets"): "runs:read",  # the EventSource ticket (PITFALLS 1.6)
    ("GET", "/sources"): "sources:read",
    ("POST", "/sources"): "sources:write",
    ("GET", "/sources/{}"): "sources:read",
    ("DELETE", "/sources/{}"): "sources:write",
    ("POST", "/sources/{}/sync"): "sources:write",
    ("GET", "/metrics"): "metrics:read",
    ("GET", "/export"): "export:read",
    ("GET", "/healthz"): PUBLIC,
    ("GET", "/openapi.json"): PUBLIC,
}
PUBLIC_PATHS = {"/healthz", "/openapi.json"}




def test_every_route_declares_a_known_scope_or_is_public(app):
    routes = app_routes(app)
    assert len(routes) >= 10
    undeclared = [f"{r.method} {r.rule}" for r in routes if r.scope not in (*SCOPES, PUBLIC)]
    assert not undeclared, f"routes without @requires(scope) or @public: {undeclared}"


def test_only_healthz_and_openapi_are_public(app):
    public = {r.rule for r in app_routes(app) if r.scope == PUBLIC}
    assert public == PUBLIC_PATHS


def test_declared_scopes_match_the_design_table(app):
    checked = 0
    for route in app_routes(app):
        key = (route.method, re.sub(r"<[^>]+>", "{}", route.rule))
        if key in DESIGN_SCOPES:
            assert route.scope == DESIGN_SCOPES[key], f"{route.method} {route.rule}"
            checked += 1
    assert checked >= 10


def test_a_route_without_a_declared_scope_is_refused_even_with_every_scope(app):
    @app.get("/undeclared")
    def undeclared() -> Response:  # neither @requires nor @public
        return Response("should never be seen")

    response = app.test_client().get("/undeclared", headers={"Authorization": "Bearer dev-token"})
    assert response.status_code == 403
    assert "should never be seen" not in response.get_data(as_text=True)
    assert response.headers["WWW-Authenticate"].endswith('scope="(undeclared)"')
    assert [r.rule for r in app_routes(app) if r.scope is None] == ["/undeclared"]  # and the walk finds it
