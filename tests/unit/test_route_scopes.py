"""Every route declares its scope next to it, once; this walks the URL map so none can be added without one."""

from __future__ import annotations

import re

import pytest
from flask import Response

from flwd_server.auth.scopes import SCOPES, Scope
from flwd_server.models import Principal
from flwd_server.web.access import required_scope
from flwd_server.web.openapi import openapi_document, openapi_path
from flwd_server.web.operations import AUTHENTICATED, PUBLIC, declared_operation, operation
from tests.fixtures.tokens import app_routes

# The scopes the API promises (docs/auth.rst): (method, rule with parameters as {}) -> scope.  Routes added by other
# areas are checked against this table as soon as they exist.
PROMISED_SCOPES = {
    ("GET", "/jobs"): "jobs:read",
    ("GET", "/jobs/{}"): "jobs:read",
    ("POST", "/plans"): "jobs:read",
    ("POST", "/runs"): "runs:write",
    ("GET", "/runs"): "runs:read",
    ("GET", "/runs/{}"): "runs:read",
    ("POST", "/runs/{}/cancel"): "runs:write",
    ("GET", "/runs/{}/events"): "runs:read",
    ("GET", "/events"): "runs:read",
    ("POST", "/stream-tickets"): "runs:read",  # the EventSource ticket: browsers cannot send Authorization
    ("GET", "/sources"): "sources:read",
    ("POST", "/sources"): "sources:write",
    ("GET", "/sources/{}"): "sources:read",
    ("DELETE", "/sources/{}"): "sources:write",
    ("POST", "/sources/{}/sync"): "sources:write",
    ("GET", "/metrics"): "metrics:read",
    ("GET", "/export"): "export:read",
    ("GET", "/healthz"): PUBLIC,
    ("GET", "/openapi.json"): PUBLIC,
    ("GET", "/"): PUBLIC,  # the index, or a browser's way to the dashboard
    ("GET", "/ui"): PUBLIC,  # the dashboard's page and files: no data until the user signs in
    ("GET", "/ui/"): PUBLIC,
    ("GET", "/ui/{}"): PUBLIC,
    ("GET", "/ui/assets/{}"): PUBLIC,
    ("GET", "/auth/me"): AUTHENTICATED,  # who the token is: any valid token, no scope
}
PUBLIC_PATHS = {"/healthz", "/openapi.json", "/", "/ui", "/ui/", "/ui/<path:where>", "/ui/assets/<path:name>"}


def test_every_route_declares_a_known_scope_or_is_public(app):
    routes = app_routes(app)
    assert len(routes) >= 10
    undeclared = [f"{r.method} {r.rule}" for r in routes if r.scope not in (*SCOPES, PUBLIC, AUTHENTICATED)]
    assert not undeclared, f"routes without @operation(scope or PUBLIC, ...): {undeclared}"


def test_only_healthz_openapi_the_index_and_the_dashboard_are_public(app):
    public = {r.rule for r in app_routes(app) if r.scope == PUBLIC}
    assert public == PUBLIC_PATHS


def test_declared_scopes_match_the_design_table(app):
    checked = 0
    for route in app_routes(app):
        key = (route.method, re.sub(r"<[^>]+>", "{}", route.rule))
        if key in PROMISED_SCOPES:
            assert route.scope == PROMISED_SCOPES[key], f"{route.method} {route.rule}"
            checked += 1
    assert checked >= 10


def test_a_route_without_a_declared_scope_is_refused_even_with_every_scope(app):
    @app.get("/undeclared")
    def undeclared() -> Response:  # no @operation
        return Response("should never be seen")

    response = app.test_client().get("/undeclared", headers={"Authorization": "Bearer dev-token"})
    assert response.status_code == 403
    assert "should never be seen" not in response.get_data(as_text=True)
    assert response.headers["WWW-Authenticate"].endswith('scope="(undeclared)"')
    assert [r.rule for r in app_routes(app) if r.scope is None] == ["/undeclared"]  # and the walk finds it


def test_the_check_and_the_document_read_one_declaration(app, monkeypatch):
    """For every rule of the URL map (one added here too), the scope the hook enforces is the one documented."""

    @app.get("/added/<thing>")
    @operation(Scope.EXPORT_READ, "A route added by the test", {"200": {"description": "OK"}}, operation_id="getAdded")
    def added(thing: str) -> Response:
        return Response("ok")

    # A token is a comma-separated list of the scopes it holds.
    monkeypatch.setattr(
        app.config["FLWD_ENGINE"].authenticator, "verify_jwt", lambda token: Principal("t", frozenset(token.split(",")))
    )
    client = app.test_client()
    paths = openapi_document(app)["paths"]
    checked = 0
    for route in app_routes(app):
        endpoint = app.url_map.bind("localhost").match(route.path, method=route.method)[0]
        declared = declared_operation(app, endpoint)
        op = paths[openapi_path(route.rule)][route.method.lower()]
        assert declared is not None and op["summary"] == declared.summary, route
        assert route.scope == required_scope(app, endpoint) == declared.scope, route
        if declared.public:
            assert op["security"] == [] and "x-required-scope" not in op, route
            continue
        if declared.any_token:  # any valid token, even one holding no scope at all
            assert op["security"] == [{"bearer": []}] and "x-required-scope" not in op, route
            assert "401" in op["responses"] and "403" not in op["responses"], route
            response = client.open(route.path, method=route.method, headers={"Authorization": "Bearer "})
            assert response.status_code == 401, route
            no_scope = client.open(route.path, method=route.method, headers={"Authorization": "Bearer x"})
            assert no_scope.status_code == 200, route
            continue
        assert op["x-required-scope"] == declared.scope and op["security"] == [{"bearer": [declared.scope]}], route
        # What the hook enforces: every scope but the documented one is a 403 naming it.
        others = ",".join(s for s in SCOPES if s != op["x-required-scope"])
        response = client.open(route.path, method=route.method, headers={"Authorization": f"Bearer {others}"})
        assert response.status_code == 403 and response.get_json()["scope"] == op["x-required-scope"], route
        checked += 1
    assert checked >= 16 and paths["/added/{thing}"]["get"]["x-required-scope"] == "export:read"
    assert client.get("/added/x", headers={"Authorization": "Bearer export:read"}).get_data(as_text=True) == "ok"


def test_a_view_without_a_declaration_is_refused_by_the_document_too(app):
    @app.get("/undeclared")
    def undeclared() -> Response:  # no @operation
        return Response("should never be seen")

    response = app.test_client().get("/undeclared")  # no token: the hook asks for one first, as for any route
    assert response.status_code == 401
    with pytest.raises(LookupError, match="/undeclared"):  # create_app builds the document: such an app does not start
        openapi_document(app)


def test_an_unknown_scope_cannot_be_declared():
    with pytest.raises(ValueError, match="runs:delete"):
        operation("runs:delete", "Delete a run", {"204": {"description": "Deleted"}}, operation_id="deleteRun")


def test_a_stream_ticket_stands_in_for_a_token_only_where_the_route_declares_the_ticket_parameter(app):
    accepting = {
        rule.rule
        for rule in app.url_map.iter_rules()
        if (declared := declared_operation(app, rule.endpoint)) is not None and declared.accepts_ticket
    }
    assert accepting == {"/runs/<run_id>/events", "/events"}
