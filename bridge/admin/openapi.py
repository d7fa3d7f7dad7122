"""The OpenAPI 3 description of the admin API, served at `/api/openapi.json`."""

from __future__ import annotations

from typing import Any

from bridge import __version__
from bridge.models import EVENT_TYPES, DeliveryState

_CURSOR = "^c_(0|[1-9a-z][0-9a-z]{0,12})$"
_NULLABLE_TIME = {"type": ["string", "null"], "format": "date-time"}
_ERROR = {"$ref": "#/components/schemas/Error"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*codes: int) -> dict[str, Any]:
    words = {
        400: "bad parameter",
        401: "missing or wrong bearer token",
        403: "a foreign Origin, or (without a token) a Host that is not loopback nor in"
        " admin.allowed_hosts",
        404: "unknown id",
        409: "conflicts with the current state",
        410: "the cursor is older than the retained events: start again without after",
        413: "body larger than 1 MiB",
        415: "a body that is not application/json",
        503: "store unavailable",
    }
    return {str(c): _json(_ERROR, words[c]) for c in sorted({*codes, 401, 403, 503})}


def _post_errors(*codes: int) -> dict[str, Any]:
    """A POST's errors: those of every route, and its body's (413, 415)."""
    return _errors(*codes, 413, 415)


def _id_param(description: str, pattern: str | None = None) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "string"}
    if pattern:
        schema["pattern"] = pattern
    return {
        "name": "id",
        "in": "path",
        "required": True,
        "description": description,
        "schema": schema,
    }


_LIMIT = {
    "name": "limit",
    "in": "query",
    "schema": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100},
}

_SCHEMAS: dict[str, Any] = {
    "Readiness": {
        "type": "object",
        "required": ["ready", "reasons", "last_poll_success_at"],
        "properties": {
            "ready": {"type": "boolean"},
            "reasons": {"type": "array", "items": {"type": "string"}},
            "last_poll_success_at": _NULLABLE_TIME,
        },
    },
    "Error": {
        "type": "object",
        "required": ["error"],
        "properties": {"error": {"type": "string"}},
    },
    "Subscriber": {
        "type": "object",
        "required": ["id", "url", "format", "events", "state", "enabled", "deliveries"],
        "properties": {
            "id": {"type": "string"},
            "url": {
                "type": "string",
                "description": "scheme, host and port; path, query and user-info are hidden",
            },
            "format": {"enum": ["standard", "zapier", "slack", "discord", "teams"]},
            "events": {"type": "array", "items": {"type": "string"}},
            "state": {"enum": ["active", "paused", "disabled"]},
            "enabled": {"type": "boolean"},
            "disabled_at": _NULLABLE_TIME,
            "disabled_reason": {"type": ["string", "null"]},
            "failing_since": _NULLABLE_TIME,
            "max_concurrency": {"type": "integer"},
            "rate_limit_per_s": {"type": ["number", "null"]},
            "deliveries": {
                "type": "object",
                "properties": {s.value: {"type": "integer"} for s in DeliveryState},
            },
        },
    },
    "Event": {
        "type": "object",
        "required": ["id", "type", "timestamp", "record_id", "data"],
        "properties": {
            "id": {"type": "string"},
            "type": {"enum": list(EVENT_TYPES)},
            "timestamp": {"type": "string", "format": "date-time"},
            "previous_status": {"type": ["string", "null"]},
            "record_id": {"type": "string"},
            "data": {"type": "object"},
        },
    },
    "FeedEvent": {
        "type": "object",
        "description": "the standard webhook body of the event, plus its cursor",
        "required": ["id", "type", "timestamp", "previous_status", "data", "cursor"],
        "properties": {
            "id": {"type": "string"},
            "type": {"enum": list(EVENT_TYPES)},
            "timestamp": {"type": "string", "format": "date-time"},
            "previous_status": {"type": ["string", "null"]},
            "data": {"type": "object"},
            "cursor": {"type": "string", "pattern": _CURSOR},
        },
    },
    "Attempt": {
        "type": "object",
        "required": ["attempted_at", "status_code", "latency_ms", "error", "response_excerpt"],
        "properties": {
            "attempted_at": {"type": "string", "format": "date-time"},
            "status_code": {"type": ["integer", "null"]},
            "latency_ms": {"type": "number"},
            "error": {"type": ["string", "null"]},
            "response_excerpt": {"type": "string", "maxLength": 4096},
        },
    },
    "Delivery": {
        "type": "object",
        "required": ["id", "event_id", "event_type", "subscriber", "state", "attempt_count"],
        "properties": {
            "id": {"type": "integer"},
            "event_id": {"type": "string"},
            "event_type": {"type": "string"},
            "record_id": {"type": "string"},
            "subscriber": {"type": "string"},
            "state": {"enum": [s.value for s in DeliveryState]},
            "attempt_count": {"type": "integer"},
            "next_attempt_at": _NULLABLE_TIME,
            "created_at": {"type": "string", "format": "date-time"},
            "updated_at": {"type": "string", "format": "date-time"},
            "last_attempt": {"oneOf": [{"$ref": "#/components/schemas/Attempt"}, {"type": "null"}]},
            "attempts": {"type": "array", "items": {"$ref": "#/components/schemas/Attempt"}},
        },
    },
    "TestResult": {
        "allOf": [
            {"$ref": "#/components/schemas/Attempt"},
            {
                "type": "object",
                "required": ["subscriber", "ok"],
                "properties": {"subscriber": {"type": "string"}, "ok": {"type": "boolean"}},
            },
        ]
    },
}


_RECORD = {
    "name": "record",
    "in": "query",
    "description": "a Munsit record id: only its events",
    "schema": {"type": "string", "maxLength": 256},
}
_FILTERS = [
    {"name": "type", "in": "query", "schema": {"enum": list(EVENT_TYPES)}},
    {**_RECORD, "description": "a Munsit record id: only deliveries of its events"},
    {
        "name": "since",
        "in": "query",
        "description": "only deliveries queued at or after this time",
        "schema": {"type": "string", "format": "date-time"},
    },
    {
        "name": "until",
        "in": "query",
        "description": "only deliveries queued before this time",
        "schema": {"type": "string", "format": "date-time"},
    },
]


def _subscriber_action(summary: str) -> dict[str, Any]:
    return {
        "post": {
            "summary": summary,
            "parameters": [_id_param("subscriber id")],
            "responses": {
                "200": _json({"$ref": "#/components/schemas/Subscriber"}, "the subscriber now"),
                **_post_errors(404, 409),
            },
        }
    }


def document() -> dict[str, Any]:
    """The whole OpenAPI 3.1 document."""
    page = {"type": ["string", "null"]}
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "munsit-bridge admin API",
            "version": __version__,
            "description": "Operate the bridge: subscribers, events, deliveries, replay. "
            "A request carrying an `Origin` other than the server's own is refused (403). "
            "Without `admin.token`, only a loopback `Host` (localhost, 127.0.0.0/8, [::1]) or "
            "one in `admin.allowed_hosts` is answered (403 otherwise). Request bodies are "
            "`application/json` only (415 otherwise); a POST that needs no body may be sent "
            "without one and without a `Content-Type`.",
        },
        "components": {
            "schemas": _SCHEMAS,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearer": []}],
        "paths": {
            "/api/subscribers": {
                "get": {
                    "summary": "Every configured subscriber with its state and delivery counts",
                    "responses": {
                        "200": _json(
                            {
                                "type": "object",
                                "required": ["subscribers"],
                                "properties": {
                                    "subscribers": {
                                        "type": "array",
                                        "items": {"$ref": "#/components/schemas/Subscriber"},
                                    }
                                },
                            },
                            "subscribers",
                        ),
                        **_errors(),
                    },
                }
            },
            "/api/subscribers/{id}/enable": _subscriber_action(
                "Resume a subscriber the bridge or an operator disabled"
            ),
            "/api/subscribers/{id}/disable": _subscriber_action(
                "Stop sending to a subscriber; its deliveries stay queued"
            ),
            "/api/subscribers/{id}/test": {
                "post": {
                    "summary": "Send a signed bridge.test event now",
                    "parameters": [_id_param("subscriber id")],
                    "responses": {
                        "200": _json(
                            {"$ref": "#/components/schemas/TestResult"}, "the attempt's outcome"
                        ),
                        **_post_errors(404),
                    },
                }
            },
            "/api/events": {
                "get": {
                    "summary": "Stored events, newest first",
                    "parameters": [
                        {"name": "type", "in": "query", "schema": {"enum": list(EVENT_TYPES)}},
                        _LIMIT,
                        {
                            "name": "before",
                            "in": "query",
                            "description": "an event id (404 if none is stored): the events"
                            " recorded before it",
                            "schema": {"type": "string"},
                        },
                        _RECORD,
                    ],
                    "responses": {
                        "200": _json(
                            {
                                "type": "object",
                                "required": ["events", "next_before"],
                                "properties": {
                                    "events": {
                                        "type": "array",
                                        "items": {"$ref": "#/components/schemas/Event"},
                                    },
                                    "next_before": page,
                                },
                            },
                            "a page of events",
                        ),
                        **_errors(400, 404),
                    },
                }
            },
            "/api/deliveries": {
                "get": {
                    "summary": "Deliveries, newest first",
                    "parameters": [
                        {
                            "name": "state",
                            "in": "query",
                            "schema": {"enum": [s.value for s in DeliveryState]},
                        },
                        {"name": "subscriber", "in": "query", "schema": {"type": "string"}},
                        *_FILTERS,
                        _LIMIT,
                        {
                            "name": "before",
                            "in": "query",
                            "description": "a delivery id: the deliveries older than it",
                            "schema": {"type": "integer", "minimum": 1, "maximum": 10**18 - 1},
                        },
                    ],
                    "responses": {
                        "200": _json(
                            {
                                "type": "object",
                                "required": ["deliveries", "next_before"],
                                "properties": {
                                    "deliveries": {
                                        "type": "array",
                                        "items": {"$ref": "#/components/schemas/Delivery"},
                                    },
                                    "next_before": {"type": ["integer", "null"]},
                                },
                            },
                            "a page of deliveries",
                        ),
                        **_errors(400),
                    },
                }
            },
            "/api/retry": {
                "post": {
                    "summary": "Send every dead letter (failed delivery) the filter matches again",
                    "requestBody": {
                        "required": False,
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "additionalProperties": False,
                                    "properties": {
                                        "state": {"enum": ["failed", None]},
                                        "subscriber": {"type": ["string", "null"]},
                                        "type": {"enum": [*EVENT_TYPES, None]},
                                        "record": {"type": ["string", "null"]},
                                        "since": {
                                            "type": ["string", "null"],
                                            "format": "date-time",
                                        },
                                        "until": {
                                            "type": ["string", "null"],
                                            "format": "date-time",
                                        },
                                    },
                                }
                            }
                        },
                    },
                    "responses": {
                        "200": _json(
                            {
                                "type": "object",
                                "required": ["retried"],
                                "properties": {"retried": {"type": "integer"}},
                            },
                            "how many dead letters are due again",
                        ),
                        **_post_errors(400, 404),
                    },
                }
            },
            "/api/deliveries/{id}": {
                "get": {
                    "summary": "One delivery with every attempt",
                    "parameters": [_id_param("delivery id", r"^[1-9][0-9]{0,17}$")],
                    "responses": {
                        "200": _json({"$ref": "#/components/schemas/Delivery"}, "the delivery"),
                        **_errors(400, 404),
                    },
                }
            },
            "/api/deliveries/{id}/retry": {
                "post": {
                    "summary": "Send a failed or waiting delivery again now (same event id)",
                    "parameters": [_id_param("delivery id", r"^[1-9][0-9]{0,17}$")],
                    "responses": {
                        "200": _json(
                            {
                                "type": "object",
                                "required": ["was", "delivery"],
                                "properties": {
                                    "was": {"enum": ["pending", "failed"]},
                                    "delivery": {"$ref": "#/components/schemas/Delivery"},
                                },
                            },
                            "the delivery, due now",
                        ),
                        **_post_errors(400, 404, 409),
                    },
                }
            },
            "/api/feed": {
                "get": {
                    "summary": "Events oldest first after a cursor (admin or feed token)",
                    "parameters": [
                        {
                            "name": "after",
                            "in": "query",
                            "description": "a cursor (an event's or a `next`): the events"
                            " stored after it; without it, from the oldest retained event",
                            "schema": {"type": "string", "pattern": _CURSOR},
                        },
                        _LIMIT,
                        {"name": "type", "in": "query", "schema": {"enum": list(EVENT_TYPES)}},
                        {
                            "name": "wait_s",
                            "in": "query",
                            "description": "when there is nothing yet, wait up to this long"
                            " for an event (long poll)",
                            "schema": {"type": "number", "minimum": 0, "maximum": 30},
                        },
                    ],
                    "responses": {
                        "200": _json(
                            {
                                "type": "object",
                                "required": ["events", "next"],
                                "properties": {
                                    "events": {
                                        "type": "array",
                                        "items": {"$ref": "#/components/schemas/FeedEvent"},
                                    },
                                    "next": {"type": "string", "pattern": _CURSOR},
                                },
                            },
                            "a page of events; pass `next` back as `after`",
                        ),
                        **_errors(400, 410),
                    },
                }
            },
            "/api/stream": {
                "get": {
                    "summary": "Server-Sent Events as they are stored (admin or feed token)",
                    "parameters": [
                        {
                            "name": "after",
                            "in": "query",
                            "description": "a cursor: the events stored after it (the"
                            " Last-Event-ID header wins); without one, from now on",
                            "schema": {"type": "string", "pattern": _CURSOR},
                        },
                        {
                            "name": "Last-Event-ID",
                            "in": "header",
                            "schema": {"type": "string", "pattern": _CURSOR},
                        },
                        {"name": "type", "in": "query", "schema": {"enum": list(EVENT_TYPES)}},
                    ],
                    "responses": {
                        "200": {
                            "description": "`id: <cursor>`, `event: <type>`, `data: <standard"
                            " body>` per event; `: keep-alive` every 15 s",
                            "content": {"text/event-stream": {"schema": {"type": "string"}}},
                        },
                        **_errors(400, 410),
                    },
                }
            },
            "/api/replay": {
                "post": {
                    "summary": "Re-enqueue stored events with their original ids",
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "required": ["since"],
                                    "additionalProperties": False,
                                    "properties": {
                                        "since": {"type": "string", "format": "date-time"},
                                        "subscriber": {"type": ["string", "null"]},
                                        "type": {"enum": [*EVENT_TYPES, None]},
                                    },
                                }
                            }
                        },
                    },
                    "responses": {
                        "200": _json(
                            {
                                "type": "object",
                                "required": ["events", "deliveries"],
                                "properties": {
                                    "events": {"type": "integer"},
                                    "deliveries": {"type": "integer"},
                                },
                            },
                            "how many events matched and deliveries were enqueued",
                        ),
                        **_post_errors(400, 404),
                    },
                }
            },
            "/healthz": {
                "get": {
                    "summary": "200 while the process runs",
                    "security": [],
                    "responses": {
                        "200": _json(
                            {
                                "type": "object",
                                "required": ["status"],
                                "properties": {"status": {"const": "ok"}},
                            },
                            "alive",
                        )
                    },
                }
            },
            "/readyz": {
                "get": {
                    "summary": "Ready: the store answers and a poll succeeded within 3 intervals",
                    "security": [],
                    "responses": {
                        code: _json({"$ref": "#/components/schemas/Readiness"}, words)
                        for code, words in (("200", "ready"), ("503", "not ready, with reasons"))
                    },
                }
            },
            "/metrics": {
                "get": {
                    "summary": "Prometheus metrics",
                    "security": [],
                    "responses": {
                        "200": {
                            "description": "Prometheus text exposition format",
                            "content": {"text/plain": {"schema": {"type": "string"}}},
                        }
                    },
                }
            },
            "/api/openapi.json": {
                "get": {
                    "summary": "This document",
                    "responses": {"200": {"description": "OpenAPI 3.1"}, **_errors()},
                }
            },
        },
    }
