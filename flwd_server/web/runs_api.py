"""Runs: submit, list, get, cancel, and each run's event stream."""

from __future__ import annotations

import re

from flask import Blueprint, Response, current_app, g, request

from ..auth.scopes import Scope
from ..errors import BadRequest, Unprocessable
from ..events.broadcast import HAND_OFF, BroadcastBody, can_take_over
from ..events.sse import ClosingStream, crowd_pause, event_stream, parse_last_event_id
from ..models import RunStatus
from ..store.event_filter import PARAMETERS as FILTER_PARAMETERS
from ..store.event_filter import EventFilter, list_pattern
from ..store.run_records import body_hash
from .access import principal
from .bodies import has_body, json_body, no_body, plan_request, query_choice, query_int, query_text
from .operations import operation
from .render import base_url, json_response
from .schemas import (
    CALLBACK_REQUEST,
    LAST_EVENT_ID,
    NAME_QUERY,
    NULLABLE_STR,
    RUN_REQUEST,
    SOURCE_QUERY,
    SSE,
    STATUSES,
    json_reply,
    json_request,
    object_schema,
    problems,
    query_parameter,
    ref,
)

bp = Blueprint("runs", __name__)
IDEMPOTENCY_KEY_RE = re.compile(r"[\x21-\x7e]{1,255}")
SSE_HEADERS = {
    "Cache-Control": "no-cache, no-transform",
    "X-Accel-Buffering": "no",
}
RUN_REPLY = object_schema({"run": ref("Run")}, ["run"])
EVENT_FILTERS = [
    query_parameter(
        "type",
        {"type": "string", "pattern": list_pattern("type")},
        "only these event types, comma-separated: exact (run.finished) or a prefix (run.*)",
    ),
    query_parameter(
        "run", {"type": "string", "pattern": list_pattern("run")}, "only the events of these runs, comma-separated"
    ),
    query_parameter(
        "job",
        {"type": "string", "pattern": list_pattern("job")},
        "only the events of runs of these jobs, comma-separated (events without a run never match)",
    ),
    query_parameter(
        "source",
        {"type": "string", "pattern": list_pattern("source")},
        "only the events of runs from these sources, and the events without a run that name one of them "
        "(source.synced, source.failed), comma-separated",
    ),
]


def _engine():
    return current_app.config["FLWD_ENGINE"]


@bp.post("/runs")
@operation(
    Scope.RUNS_WRITE,
    "Submit a run",
    {"202": json_reply(RUN_REPLY, "Accepted"), **problems(400, 404, 409, 413, 415, 422, 503)},
    parameters=[
        {
            "name": "Idempotency-Key",
            "in": "header",
            "required": False,
            "schema": {"type": "string", "pattern": "^[!-~]{1,255}$"},
        }
    ],
    request_body=json_request(
        {
            **RUN_REQUEST,
            "properties": {
                **RUN_REQUEST["properties"],
                "plan": {"type": "string", "pattern": "^sha256:[0-9a-f]{64}$"},
                "callback": {**CALLBACK_REQUEST, "description": "POST the run here, signed, when it ends"},
            },
        }
    ),
    operation_id="submitRun",
)
def submit_run() -> Response:
    key = request.headers.get("Idempotency-Key")
    if key is not None and not IDEMPOTENCY_KEY_RE.fullmatch(key):
        raise BadRequest("Idempotency-Key must be 1-255 visible ASCII characters")
    run_request = plan_request(with_plan=True)
    idempotency = (key, body_hash(g.flwd_body)) if key else None
    run, replayed = _engine().submit(run_request, principal(), idempotency)
    body = _engine().placed([run])[0].to_dict(base_url())
    headers = {"Location": body["links"]["self"]}
    if replayed:
        headers["Idempotent-Replayed"] = "true"
    return json_response({"run": body}, status=202, headers=headers)


@bp.get("/runs")
@operation(
    Scope.RUNS_READ,
    "List runs, newest first",
    {
        "200": json_reply(
            object_schema({"runs": {"type": "array", "items": ref("Run")}, "next": NULLABLE_STR}, ["runs", "next"])
        ),
        **problems(400),
    },
    parameters=[
        query_parameter("status", {"type": "string", "enum": STATUSES}),
        query_parameter("job", NAME_QUERY),
        SOURCE_QUERY,
        {**query_parameter("limit", {"type": "integer", "minimum": 1, "maximum": 500}), "allowEmptyValue": False},
        query_parameter("cursor", {"type": "string", "pattern": "^[0-9]{1,20}$"}, "the `next` of the previous page"),
    ],
    operation_id="listRuns",
)
def list_runs() -> Response:
    runs, cursor = _engine().runs(
        status=query_choice("status", tuple(s.value for s in RunStatus)),
        job=query_text("job"),
        source=query_text("source"),
        limit=query_int("limit", 50, 1, 500),
        before=query_int("cursor", 0, 1, 2**62, empty_is_absent=True) or None,
        grants=principal().grants(Scope.RUNS_READ),
    )
    return json_response({"runs": [r.to_dict(base_url()) for r in runs], "next": str(cursor) if cursor else None})


@bp.get("/runs/<run_id>")
@operation(Scope.RUNS_READ, "One run", {"200": json_reply(RUN_REPLY), **problems(404)}, operation_id="getRun")
def get_run(run_id: str) -> Response:
    return json_response({"run": _engine().run_view(run_id, base_url(), principal())})


@bp.post("/runs/<run_id>/cancel")
@operation(
    Scope.RUNS_WRITE,
    "Cancel a queued or running run",
    {"202": json_reply(RUN_REPLY, "Accepted"), **problems(404, 409, 413, 415, 503)},
    operation_id="cancelRun",
)
def cancel_run(run_id: str) -> Response:
    no_body()
    run = _engine().cancel(run_id, principal())
    return json_response({"run": run.to_dict(base_url())}, status=202)


def event_filter_query() -> EventFilter:
    """The ``type``/``run``/``job``/``source`` filter of the query; a repeated parameter adds values (OR)."""
    return EventFilter.parse({name: ",".join(v for v in request.args.getlist(name) if v) for name in FILTER_PARAMETERS})


def sse_response(run_id: str | None) -> Response:
    engine = _engine()
    after = parse_last_event_id(request.headers.get("Last-Event-ID"), request.args.get("after"))
    who = principal()
    event_filter = (  # a 400 before any stream starts; a narrowed token's stream sees only its runs
        event_filter_query().narrowed(who.grants(Scope.RUNS_READ), who.has_scope(Scope.SOURCES_READ))
        if run_id is None
        else None
    )
    if run_id is not None:
        engine.run(run_id, who)  # 404 for an unknown run (or one not granted), before any stream starts
        terminal = engine.terminal_event_id(run_id)
        if terminal is not None and after >= terminal:
            return Response(status=204)  # finished and fully seen: tells EventSource to stop
    slots = current_app.config["FLWD_STREAM_SLOTS"]
    slots.acquire()
    engine.hub.start()
    settings = engine.settings
    sock = can_take_over(request.environ) if settings.sse.broadcast else None
    if sock is not None:
        chunked = request.environ.get("SERVER_PROTOCOL") == "HTTP/1.1"
        body = BroadcastBody(
            engine.broadcaster,
            sock,
            after=after,
            run_id=run_id,
            chunked=chunked,
            retry_ms=settings.sse.retry_ms,
            event_filter=event_filter,
            release=slots.release,
            hand_off=request.environ.get(HAND_OFF) is True,  # FlwdWorker: the stream gives its thread back
        )
        return Response(body, mimetype="text/event-stream", headers=SSE_HEADERS, direct_passthrough=True)
    frames = event_stream(
        engine.hub,
        after=after,
        run_id=run_id,
        event_filter=event_filter,
        heartbeat=settings.sse.heartbeat,
        max_duration=settings.sse.max_duration,
        retry_ms=settings.sse.retry_ms,
        is_closing=lambda: engine.closing,
        pause=lambda: crowd_pause(slots.open, settings.sse.crowd_pause),
    )
    return Response(
        ClosingStream(frames, slots.release), mimetype="text/event-stream", headers=SSE_HEADERS, direct_passthrough=True
    )


@bp.post("/stream-tickets")
@operation(
    Scope.RUNS_READ,
    "A ticket to open an event stream without an Authorization header, as often as needed until it expires",
    {
        "201": json_reply(
            object_schema(
                {"ticket": {"type": "string"}, "expires_in": {"type": "number"}, "run_id": NULLABLE_STR},
                ["ticket", "expires_in", "run_id"],
            ),
            "Created",
        ),
        **problems(400, 404, 413, 415, 422),
    },
    request_body=json_request(object_schema({"run": {"type": ["string", "null"], "minLength": 1}}), required=False),
    operation_id="createStreamTicket",
)
def create_stream_ticket() -> Response:
    """For browsers: EventSource cannot send Authorization, so it opens ``...events?ticket=T``, and reopens it."""
    run_id = None
    if has_body():  # not request.content_length: a chunked body has none, and was ignored
        body = json_body(("run",))
        run_id = body.get("run")
        if run_id is not None and (not isinstance(run_id, str) or not run_id):
            raise Unprocessable("run: expected a run id", [{"field": "run", "message": "expected a run id"}])
    return json_response(_engine().issue_stream_ticket(principal(), run_id), status=201)


@bp.get("/runs/<run_id>/events")
@operation(
    Scope.RUNS_READ,
    "Stream a run's events (ends after run.finished)",
    {"200": SSE, "204": {"description": "The run finished and every event was seen"}, **problems(400, 404, 503)},
    parameters=LAST_EVENT_ID,
    operation_id="streamRunEvents",
)
def run_events(run_id: str) -> Response:
    return sse_response(run_id)


@bp.get("/events")
@operation(
    Scope.RUNS_READ,
    "Stream every event, or those the filters select (all given filters apply; the values of one are alternatives)",
    {"200": SSE, **problems(400, 503)},
    parameters=[*LAST_EVENT_ID, *EVENT_FILTERS],
    operation_id="streamEvents",
)
def all_events() -> Response:
    return sse_response(None)
