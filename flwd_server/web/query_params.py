"""Query strings are checked like bodies: a parameter the route does not declare is a 400 naming it.

The parameters a route accepts are the ones its operation declares in the
OpenAPI document (built from each route's ``@operation``), so the document and
the server cannot drift apart on this.
"""

from __future__ import annotations

from typing import Any

from flask import Flask, request

from ..errors import BadRequest
from .openapi import openapi_document, openapi_path


def declared_query_parameters(document: dict[str, Any]) -> dict[tuple[str, str], frozenset[str]]:
    """``(path, METHOD) -> names`` of the query parameters each operation declares."""
    out = {}
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            names = {p["name"] for p in operation.get("parameters", []) if p.get("in") == "query"}
            out[(path, method.upper())] = frozenset(names)
    return out


def register(app: Flask) -> None:
    """Call after the blueprints are registered: the document describes the URL map as it is now."""
    declared = declared_query_parameters(openapi_document(app))

    @app.before_request
    def refuse_unknown_query_parameters() -> None:
        if not request.args or request.url_rule is None:
            return
        method = "GET" if request.method == "HEAD" else request.method
        allowed = declared.get((openapi_path(request.url_rule.rule), method))
        if allowed is None:
            return  # OPTIONS and other methods Flask answers itself
        unknown = sorted(name for name in request.args if name not in allowed)
        if unknown:
            shown = ", ".join(repr(name[:64]) for name in unknown[:10])
            raise BadRequest(f"unknown query parameter(s): {shown} (allowed: {', '.join(sorted(allowed)) or 'none'})")
