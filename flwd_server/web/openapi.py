"""The OpenAPI 3.1 document of the HTTP API, built from the app's URL map and each route's declaration.

The method and path of an operation come from the route (``@bp.get("/runs/<run_id>")``),
its path parameters from the rule's variables, everything else from the view's
:func:`~flwd_server.web.operations.operation` declaration, so nothing about a
route is written twice.
"""

from __future__ import annotations

import copy
import re
from typing import Any

from flask import Flask

from .. import __version__
from ..auth.scopes import SCOPES
from .operations import Operation, declared_operation
from .schemas import SCHEMAS, problems

# <name>, <converter:name> or <converter(args):name> in a Flask rule
RULE_VARIABLE = re.compile(r"<(?:([a-zA-Z_][a-zA-Z0-9_]*)(?:\([^)]*\))?:)?([a-zA-Z_][a-zA-Z0-9_]*)>")
# What a path variable matches, per converter: Flask's default and ``path`` take any non-empty text.
PATH_PARAMETER_SCHEMAS = {"default": {"type": "string", "minLength": 1}, "path": {"type": "string", "minLength": 1}}
UNDOCUMENTED_METHODS = {"HEAD", "OPTIONS"}  # Flask adds these two to every rule and answers them itself


def openapi_path(rule: str) -> str:
    """``/runs/<run_id>`` and ``/jobs/<path:name>`` as OpenAPI spells them: ``/runs/{run_id}``."""
    return RULE_VARIABLE.sub(r"{\2}", rule)


def path_parameters(rule: str) -> list[dict[str, Any]]:
    """The rule's variables as OpenAPI path parameters, in the order they appear."""
    out = []
    for converter, name in RULE_VARIABLE.findall(rule):
        schema = PATH_PARAMETER_SCHEMAS.get(converter or "default")
        if schema is None:
            raise ValueError(
                f"{rule}: no OpenAPI schema for the {converter!r} converter (add it to PATH_PARAMETER_SCHEMAS)"
            )
        out.append({"name": name, "in": "path", "required": True, "schema": dict(schema)})
    return out


def operation_object(declared: Operation, rule: str) -> dict[str, Any]:
    """One OpenAPI operation; every route with a scope answers 401 and 403 too."""
    responses = copy.deepcopy(dict(declared.responses))
    op: dict[str, Any] = {"operationId": declared.operation_id, "summary": declared.summary}
    if declared.public:
        op["responses"] = responses
        op["security"] = []
    elif declared.any_token:
        op["responses"] = {**problems(401), **responses}
        op["security"] = [{"bearer": []}]  # a valid token, no scope
    else:
        op["responses"] = {**problems(401, 403), **responses}
        op["security"] = [{"bearer": [declared.scope]}]
        op["x-required-scope"] = declared.scope
    parameters = path_parameters(rule) + copy.deepcopy([dict(p) for p in declared.parameters])
    for parameter in parameters:
        if parameter["in"] == "query":
            parameter.setdefault("allowEmptyValue", True)  # empty means absent, but for integers (limit)
    if parameters:
        op["parameters"] = parameters
    if declared.request_body is not None:
        op["requestBody"] = copy.deepcopy(dict(declared.request_body))
    return op


def paths(app: Flask) -> dict[str, Any]:
    """Every route of the URL map, in its order; a view without a declaration is an error, not a gap.

    So is an operationId that two operations share (one view under two rules or two methods):
    clients generated from the document would lose one of them.
    """
    out: dict[str, dict[str, Any]] = {}
    seen: dict[str, str] = {}
    for rule in app.url_map.iter_rules():
        declared = declared_operation(app, rule.endpoint)
        if declared is None:
            raise LookupError(f"{rule.rule} ({rule.endpoint}) has no @operation declaration: add one next to the route")
        for method in sorted((rule.methods or set()) - UNDOCUMENTED_METHODS):
            where = f"{method} {rule.rule}"
            if (other := seen.setdefault(declared.operation_id, where)) != where:
                raise ValueError(f"{where} and {other} share the operationId {declared.operation_id!r}")
            out.setdefault(openapi_path(rule.rule), {})[method.lower()] = operation_object(declared, rule.rule)
    return out


def openapi_document(app: Flask) -> dict[str, Any]:
    """The document of ``app`` (``web.app.routes_only_app()`` gives the API's routes with no engine)."""
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "flwd",
            "version": __version__,
            "description": "Run named, parameterised jobs over HTTP; follow them with Server-Sent Events.",
        },
        "paths": paths(app),
        "components": {
            "schemas": SCHEMAS,
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "bearerFormat": "JWT",
                    "description": "Scopes: "
                    + ", ".join(SCOPES)
                    + ". runs:read and runs:write may be narrowed to jobs: runs:write:SOURCE:JOB ('*' globs within "
                    "a part); a narrowed token is refused (403) for other jobs and sees only their runs (404 for "
                    "another run)",
                }
            },
        },
    }
