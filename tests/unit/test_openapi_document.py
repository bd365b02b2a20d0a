"""/openapi.json describes exactly the routes the app has: every path, method, path parameter, scope and
operationId, in shapes client generators read."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from flwd_server.auth.scopes import Scope
from flwd_server.web.access import required_scope
from flwd_server.web.app import routes_only_app
from flwd_server.web.openapi import openapi_document, openapi_path
from flwd_server.web.operations import AUTHENTICATED, OPERATION_ID_RE, PUBLIC, operation
from flwd_server.web.query_params import declared_query_parameters

METHODS = {"get", "post", "put", "patch", "delete"}


def url_map_operations(app) -> dict[tuple[str, str], str | None]:
    """``(OpenAPI path, method) -> declared scope`` of every route, as Flask routes it."""
    out = {}
    for rule in app.url_map.iter_rules():
        for method in (rule.methods or set()) - {"HEAD", "OPTIONS"}:  # Flask adds these two itself
            out[(openapi_path(rule.rule), method.lower())] = required_scope(app, rule.endpoint)
    return out


def document_operations(document) -> dict[tuple[str, str], dict]:
    return {
        (path, method): op for path, ops in document["paths"].items() for method, op in ops.items() if method in METHODS
    }


def test_every_route_of_the_app_is_in_the_document_and_nothing_else(app):
    assert set(url_map_operations(app)) == set(document_operations(openapi_document(app)))


def test_the_document_declares_each_routes_scope(app):
    routes = url_map_operations(app)
    for key, op in document_operations(openapi_document(app)).items():
        scope = routes[key]
        if scope == PUBLIC:
            assert op["security"] == [], key
        elif scope == AUTHENTICATED:  # a bearer token, no scope
            assert op["security"] == [{"bearer": []}] and "x-required-scope" not in op, key
            assert "401" in op["responses"], key
        else:
            assert op["x-required-scope"] == scope and op["security"] == [{"bearer": [scope]}], key
            assert {"401", "403"} <= set(op["responses"]), key


def test_path_parameters_are_declared_with_the_routes_names(app):
    for (path, method), op in document_operations(openapi_document(app)).items():
        in_path = set(re.findall(r"{([^}]+)}", path))
        declared = {p["name"] for p in op.get("parameters", []) if p["in"] == "path"}
        assert in_path == declared, (method, path)


def test_every_operation_documents_its_errors_as_problems(app):
    for key, op in document_operations(openapi_document(app)).items():
        for status, response in op["responses"].items():
            if int(status) >= 400:
                assert list(response["content"]) == ["application/problem+json"], (key, status)


def test_the_server_refuses_query_parameters_the_document_does_not_declare(app):
    client = app.test_client()
    auth = {"Authorization": "Bearer dev-token"}
    response = client.get("/runs?limit=5&colour=red", headers=auth)
    assert response.status_code == 400 and "colour" in response.get_json()["detail"]
    assert client.get("/runs?limit=5&status=queued", headers=auth).status_code == 200
    assert declared_query_parameters(openapi_document(app))[("/runs", "GET")] == {
        "status",
        "job",
        "source",
        "limit",
        "cursor",
    }


def test_the_document_is_valid_openapi_3_1():
    # The OpenAPI 3.1 meta-schema schemathesis ships (it does not validate documents loaded from a dict).
    from schemathesis.specs.openapi.definitions import OPENAPI_31_VALIDATOR

    errors = [str(e) for e in OPENAPI_31_VALIDATOR.iter_errors(openapi_document(routes_only_app()))]
    assert errors == []
    broken = openapi_document(routes_only_app())
    broken["paths"]["/runs"]["get"]["responses"]["200"] = {"content": 5}
    assert list(OPENAPI_31_VALIDATOR.iter_errors(broken))  # the check can fail


# The API's operationIds: generated clients name their functions and modules after them, so they never change.
OPERATION_IDS = {
    ("get", "/jobs"): "listJobs",
    ("get", "/jobs/{name}"): "getJob",
    ("post", "/plans"): "createPlan",
    ("post", "/runs"): "submitRun",
    ("get", "/runs"): "listRuns",
    ("get", "/runs/{run_id}"): "getRun",
    ("post", "/runs/{run_id}/cancel"): "cancelRun",
    ("post", "/runs/{run_id}/approve"): "approveRun",
    ("post", "/runs/{run_id}/deny"): "denyRun",
    ("get", "/runs/{run_id}/events"): "streamRunEvents",
    ("get", "/runs/{run_id}/artifacts"): "listRunArtifacts",
    ("get", "/runs/{run_id}/artifacts/{path}"): "getRunArtifact",
    ("get", "/events"): "streamEvents",
    ("post", "/stream-tickets"): "createStreamTicket",
    ("get", "/sources"): "listSources",
    ("post", "/sources"): "addSource",
    ("get", "/sources/{name}"): "getSource",
    ("delete", "/sources/{name}"): "removeSource",
    ("post", "/sources/{name}/sync"): "syncSource",
    ("get", "/healthz"): "getHealth",
    ("get", "/openapi.json"): "getOpenApiDocument",
    ("get", "/metrics"): "getMetrics",
    ("get", "/export"): "exportRuns",
    ("get", "/"): "getIndex",
    ("get", "/auth/me"): "getCurrentPrincipal",
    ("get", "/ui"): "redirectToDashboard",
    ("get", "/ui/"): "getDashboard",
    ("get", "/ui/{where}"): "getDashboardView",
    ("get", "/ui/assets/{name}"): "getDashboardAsset",
}


def test_each_operation_has_its_own_stable_operation_id(app):
    operations = document_operations(openapi_document(app))
    ids = {(method, path): op.get("operationId") for (path, method), op in operations.items()}
    assert ids == OPERATION_IDS  # every route has one, and none was renamed
    assert len(set(ids.values())) == len(ids)
    assert all(OPERATION_ID_RE.fullmatch(i) for i in ids.values())


def test_docs_list_every_operation_id():
    text = (Path(__file__).resolve().parents[2] / "docs" / "api.rst").read_text()
    rows = re.findall(r"^``(\w+)``\s+``(GET|POST|DELETE|PUT|PATCH) (\S+)``", text, re.MULTILINE)
    assert {(method.lower(), path): operation_id for operation_id, method, path in rows} == OPERATION_IDS


def test_two_operations_cannot_share_an_operation_id(app):
    @app.route("/twice", methods=["GET", "POST"])
    @operation(Scope.RUNS_READ, "One view, two methods", {"200": {"description": "OK"}}, operation_id="getTwice")
    def twice() -> str:
        return "ok"

    with pytest.raises(ValueError, match="getTwice"):
        openapi_document(app)


def test_a_route_cannot_reuse_another_routes_operation_id(app):
    @app.get("/runs-again")
    @operation(Scope.RUNS_READ, "A second listRuns", {"200": {"description": "OK"}}, operation_id="listRuns")
    def runs_again() -> str:
        return "ok"

    with pytest.raises(ValueError, match="GET /runs"):
        openapi_document(app)


@pytest.mark.parametrize("bad", ["list_jobs", "ListJobs", "list", "list-jobs", ""])
def test_an_operation_id_is_lower_camel_case(bad):
    with pytest.raises(ValueError, match="operationId"):
        operation(Scope.RUNS_READ, "Bad", {"200": {"description": "OK"}}, operation_id=bad)


def schema_shape_problems(schema, where: str) -> list[str]:
    """What client generators cannot read: an array without items, a schema with no type, $ref or union."""
    if not isinstance(schema, dict):
        return [f"{where}: not a schema object"]
    out = []
    types = schema.get("type", [])
    types = [types] if isinstance(types, str) else types
    if not types and not {"$ref", "anyOf", "oneOf", "allOf"} & set(schema):
        out.append(f"{where}: no type")
    if "array" in types and "items" not in schema:
        out.append(f"{where}: an array without items")
    for name, sub in schema.get("properties", {}).items():
        out += schema_shape_problems(sub, f"{where}.{name}")
    if isinstance(schema.get("additionalProperties"), dict):
        out += schema_shape_problems(schema["additionalProperties"], f"{where}.additionalProperties")
    if "items" in schema:
        out += schema_shape_problems(schema["items"], f"{where}[]")
    for keyword in ("anyOf", "oneOf", "allOf"):
        for i, sub in enumerate(schema.get(keyword, [])):
            out += schema_shape_problems(sub, f"{where}.{keyword}[{i}]")
    return out


def document_schemas(document):
    """Every schema of the document: the components and each parameter, body and response of each operation."""
    for name, schema in document["components"]["schemas"].items():
        yield f"#/components/schemas/{name}", schema
    for (path, method), op in document_operations(document).items():
        for parameter in op.get("parameters", []):
            yield f"{method} {path} {parameter['name']}", parameter["schema"]
        for media, content in op.get("requestBody", {}).get("content", {}).items():
            yield f"{method} {path} body {media}", content["schema"]
        for status, response in op["responses"].items():
            for media, content in response.get("content", {}).items():
                yield f"{method} {path} {status} {media}", content["schema"]


def test_every_schema_has_what_client_generators_need():
    document = openapi_document(routes_only_app())
    problems = [p for where, schema in document_schemas(document) for p in schema_shape_problems(schema, where)]
    assert problems == []
    broken = {"type": "object", "properties": {"choices": {"type": "array"}, "default": {}}}
    assert schema_shape_problems(broken, "x") == ["x.choices: an array without items", "x.default: no type"]
