"""Each route declared once: its scope and how the OpenAPI document describes it.

A view carries one :func:`operation` declaration next to its ``@bp.get(...)``.
The authentication hook (web/access.py) reads the scope from it, and the
document (web/openapi.py) reads the operationId, scope, summary, parameters,
body and responses from it, taking the method and path from the route itself.  So the
scope a route enforces and the one it documents cannot differ, and a view
without a declaration is refused by the hook and cannot be described.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from flask import Flask

from ..auth.scopes import Scope

F = TypeVar("F", bound=Callable[..., Any])
PUBLIC = "(public)"  # the "scope" of a route that needs no token
AUTHENTICATED = "(authenticated)"  # the "scope" of a route that needs a valid token, whatever its scopes
OPERATION_ATTR = "flwd_operation"
# operationIds are lowerCamelCase, a verb then what it acts on (listJobs, submitRun): generated
# clients name their functions and modules after them, so they are part of the API and never change.
OPERATION_ID_RE = re.compile(r"[a-z]+(?:[A-Z][a-z0-9]*)+")


@dataclass(frozen=True)
class Operation:
    """One route's declaration; ``scope`` is a :class:`Scope` value, :data:`PUBLIC` or :data:`AUTHENTICATED`."""

    operation_id: str
    scope: str
    summary: str
    responses: Mapping[str, Any]
    parameters: Sequence[Mapping[str, Any]] = ()
    request_body: Mapping[str, Any] | None = None

    @property
    def public(self) -> bool:
        return self.scope == PUBLIC

    @property
    def any_token(self) -> bool:
        """Whether any valid token will do, with no scope required (``/auth/me``)."""
        return self.scope == AUTHENTICATED

    @property
    def accepts_ticket(self) -> bool:
        """Whether ``?ticket=`` (a stream ticket) may stand in for the Authorization header:
        exactly where the route declares that query parameter."""
        return any(p.get("in") == "query" and p.get("name") == "ticket" for p in self.parameters)


def operation(
    scope: Scope | str,
    summary: str,
    responses: Mapping[str, Any],
    parameters: Sequence[Mapping[str, Any]] = (),
    request_body: Mapping[str, Any] | None = None,
    *,
    operation_id: str,
) -> Callable[[F], F]:
    """Declare a view's scope (or :data:`PUBLIC`, or :data:`AUTHENTICATED`) and its OpenAPI description.

    ``operation_id`` is the operation's stable name (``listJobs``; see :data:`OPERATION_ID_RE`);
    the document refuses two routes with the same one. Path parameters are not declared: the
    document takes them from the route. 401 and 403 need not be listed either: every route
    with a scope has them.
    """
    if not OPERATION_ID_RE.fullmatch(operation_id):
        raise ValueError(f"operationId {operation_id!r}: expected lowerCamelCase, a verb then a noun (listJobs)")
    # Plain strings: a StrEnum member's repr would leak into the 403's message.
    # ValueError at import for an unknown scope
    checked = scope if scope in (PUBLIC, AUTHENTICATED) else Scope(scope).value
    declared = Operation(operation_id, checked, summary, responses, tuple(parameters), request_body)

    def declare(view: F) -> F:
        setattr(view, OPERATION_ATTR, declared)
        return view

    return declare


def declared_operation(app: Flask, endpoint: str | None) -> Operation | None:
    """The declaration of the view an endpoint routes to; None when it has none."""
    view = app.view_functions.get(endpoint or "")
    return getattr(view, OPERATION_ATTR, None)
