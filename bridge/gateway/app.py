"""The gateway's HTTP app: Munsit's own paths and error shape, in front of Munsit.

- `POST /api/v1/denoise` (multipart `audio`, optional `callback_url`, `callback_events`,
  `metadata`): checked, then the audio is streamed on to Munsit's `POST /denoise` as it
  arrives (see `bridge.gateway.upload` for the order of the parts); Munsit's
  `{jobId, denoiseId}` plus `callback_id`, or Munsit's error as it sent it. Until the
  bridge's first poll has recorded what Munsit holds, 503 (a job finished before that
  baseline would never be called back).
- `GET /api/v1/denoise/{id}`: the client's job as last seen; `GET /api/v1/denoise`: its jobs,
  newest first; `GET /api/v1/denoise/{id}/progress`: Munsit's progress stream, relayed.

A client is known by its token (`x-api-key` or `Authorization: Bearer`), compared in constant
time with every client's. Tokens, API keys and the path or query of a callback URL are never
logged nor echoed.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import secrets
import unicodedata
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import aiohttp
import structlog
from aiohttp import web
from pydantic import SecretStr

from bridge.config import Settings, UpstreamConfig
from bridge.config_gateway import ClientConfig
from bridge.gateway.errors import (
    BAD_ANSWER,
    BAD_QUERY,
    MISSING_AUDIO,
    NO_ANSWER,
    NOT_FOUND,
    NOT_READY,
    NOT_REGISTERED,
    UNAUTHORIZED,
    UNREACHABLE,
    GatewayError,
    error_response,
)
from bridge.gateway.form import Options
from bridge.gateway.host import GATEWAY_HOST, GatewayHost
from bridge.gateway.multipart import multipart_reader
from bridge.gateway.upload import (
    FIELDS_BYTES,
    FORM_SLACK_BYTES,
    AudioPart,
    Intake,
    too_large,
)
from bridge.models import Callback, Job, record_key, split_key
from bridge.redact import redact_url
from bridge.upstream.submit import (
    Answer,
    SubmitTimeout,
    SubmitUnreachable,
    open_progress,
    read_answer,
    submit_audio,
)

log = structlog.get_logger("bridge.gateway")

PREFIX = "/api/v1"
CLOSE_GRACE_S = 1.0  # after an answer sent before the body was read: time to read it
LIST_BATCH = 500
NOT_READY_RETRY_AFTER = "5"
ERROR_BODY_CHARS = 200  # of a Munsit error body not in its error shape, quoted in ours
BASELINE_SEEN = web.AppKey("baseline_seen", set[str])  # accounts whose baseline is done


def create_gateway_app(host: GatewayHost) -> web.Application:
    app = web.Application(middlewares=[_errors], client_max_size=64 * 1024)
    app[GATEWAY_HOST] = host
    app[BASELINE_SEEN] = set()
    app.router.add_post(f"{PREFIX}/denoise", _submit)
    app.router.add_get(f"{PREFIX}/denoise", _list)
    app.router.add_get(f"{PREFIX}/denoise/{{id}}", _one)
    app.router.add_get(f"{PREFIX}/denoise/{{id}}/progress", _progress)
    return app


@web.middleware
async def _errors(request: web.Request, handler: Any) -> web.StreamResponse:
    response = await _answer(request, handler)
    resource = request.match_info.route.resource
    route = resource.canonical if resource is not None else "unmatched"
    _host(request).metrics.gateway_requests.labels(route, str(response.status)).inc()
    return response


async def _answer(request: web.Request, handler: Any) -> web.StreamResponse:
    try:
        response: web.StreamResponse = await handler(request)
        return response
    except GatewayError as exc:
        return await _answer_error(request, exc)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return error_response(exc.status, f"{exc.status}00", exc.reason)


async def _answer_error(request: web.Request, exc: GatewayError) -> web.StreamResponse:
    response = error_response(exc.status, exc.code, exc.message)
    if exc.retry_after is not None:
        response.headers["Retry-After"] = exc.retry_after
    if not exc.close:
        return response
    # the rest of the body is not read: answer, stop reading, hang up shortly after
    response.force_close()
    await response.prepare(request)
    await response.write_eof()
    _hang_up(request)
    return response


def _hang_up(request: web.Request) -> None:
    """Read no more of the request: the connection is done (aiohttp reads no more of the
    body nor lingers to drain it), reading stops now (the client's sending stalls) and the
    socket closes after `CLOSE_GRACE_S`, time for the client to read the answer (closing
    with unread bytes at once sends a reset that may destroy it)."""
    request.protocol.force_close()
    transport = request.transport
    if transport is not None:
        transport.pause_reading()
        asyncio.get_running_loop().call_later(CLOSE_GRACE_S, transport.close)


def _host(request: web.Request) -> GatewayHost:
    return request.app[GATEWAY_HOST]


def authenticate(request: web.Request) -> ClientConfig:
    """The client whose token the request carries; 401 otherwise."""
    given = request.headers.get("x-api-key")
    if given is None:
        scheme, _, value = request.headers.get("Authorization", "").partition(" ")
        given = value.strip() if scheme.lower() == "bearer" else None
    if not given:
        raise GatewayError(401, *UNAUTHORIZED)
    token = given.encode("utf-8", "surrogateescape")
    found: ClientConfig | None = None
    for client in _host(request).settings.clients:  # every one compared, whichever matches
        if hmac.compare_digest(token, client.token.get_secret_value().encode()):
            found = client
    if found is None:
        raise GatewayError(401, *UNAUTHORIZED)
    return found


def _iso(ts: float) -> str:
    moment = datetime.fromtimestamp(ts, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


async def _submit(request: web.Request) -> web.StreamResponse:
    host = _host(request)
    unread = request.body_exists and not request.content.at_eof()
    try:  # refused before the body is read: not read at all (it may be 200 MB)
        client = authenticate(request)
        await _baseline_recorded(request, _host(request).settings.client_account(client))
        if request.content_type != "multipart/form-data":
            raise GatewayError(400, *MISSING_AUDIO)
    except GatewayError as exc:
        exc.close = unread
        raise
    settings = host.settings
    cap = settings.gateway.max_upload_bytes
    length = request.content_length
    if length is not None and length > cap + FORM_SLACK_BYTES:
        raise too_large(cap)
    try:
        reader = multipart_reader(request)
    except (ValueError, AssertionError):
        raise GatewayError(400, *MISSING_AUDIO, close=unread) from None
    checked: list[Callback | None] = [None]

    async def check(options: Options) -> None:
        allow = settings.delivery.allow_private_destinations
        checked[0] = await options.callback(client, allow_private=allow)

    up, key = upstream_of(settings, client)

    async def send(chunks: AsyncIterator[bytes], audio: AudioPart) -> Answer:
        return await submit_audio(
            host.upstream,
            base_url=up.base_url,
            api_key=key,
            file_name=audio.file_name,
            content_type=audio.content_type,
            chunks=chunks,
            timeout_s=up.request_timeout_s,
        )

    fields_cap = FIELDS_BYTES if length is None else None
    intake = Intake(reader, cap=cap, check=check, fields_cap=fields_cap)
    try:
        audio, answer = await intake.submit(send)
    except GatewayError as exc:  # refused with the body partly read: the rest is not read
        exc.close = exc.close or not request.content.at_eof()
        raise
    except SubmitUnreachable as exc:
        log.warning("gateway: Munsit unreachable", client=client.id, error=str(exc))
        raise GatewayError(502, UNREACHABLE, "Munsit could not be reached") from None
    except SubmitTimeout as exc:
        log.warning("gateway: Munsit did not answer", client=client.id, error=str(exc))
        raise GatewayError(504, NO_ANSWER, "Munsit did not answer in time") from None
    except ValueError:  # a malformed multipart body
        raise GatewayError(400, *MISSING_AUDIO, close=True) from None
    except (ConnectionError, asyncio.IncompleteReadError):  # the client went away
        raise GatewayError(400, *MISSING_AUDIO, close=True) from None
    if answer.status != 200:
        response = _pass_through(request, answer, client)
        if answer.early:  # the rest of the upload is not read: answer, then hang up
            await response.prepare(request)
            await response.write_eof()
            _hang_up(request)
        return response
    return await _accepted(request, host, client, audio, answer, checked[0])


def upstream_of(settings: Settings, client: ClientConfig) -> tuple[UpstreamConfig, SecretStr]:
    """The upstream settings and API key of the account `client` submits with."""
    account = settings.client_account(client)
    return settings.account_upstreams()[account], settings.account_key(account)


def _pass_through(request: web.Request, answer: Answer, client: ClientConfig) -> web.Response:
    """Munsit's error as it sent it; a body not in its error shape (an HTML page from a
    proxy, an undocumented JSON body) is quoted, cleaned, in Munsit's shape."""
    log.info("gateway: Munsit refused a submission", client=client.id, status=answer.status)
    body: Any = None
    with contextlib.suppress(ValueError):
        body = json.loads(answer.body)
    key = upstream_of(_host(request).settings, client)[1].get_secret_value()
    if isinstance(body, dict) and "errorCode" in body and "errorMessage" in body:
        response = web.Response(
            body=answer.body, status=answer.status, content_type="application/json"
        )
    else:
        message = f"Munsit answered {answer.status}: {_quoted_body(answer.body, key)}".rstrip()
        response = web.json_response(
            {"errorCode": f"{answer.status}00", "errorMessage": message}, status=answer.status
        )
    if answer.retry_after is not None:
        response.headers["Retry-After"] = answer.retry_after
    if answer.early:  # Munsit answered before the whole upload was read: the rest is not
        response.force_close()
    return response


def _quoted_body(body: bytes, api_key: str) -> str:
    """The first `ERROR_BODY_CHARS` characters of a body, control characters removed (and
    the bridge's API key, should a proxy's page echo the request's headers)."""
    text = body.decode("utf-8", "replace")
    if api_key:
        text = text.replace(api_key, "[redacted]")
    text = text[:ERROR_BODY_CHARS]
    return "".join(ch for ch in text if unicodedata.category(ch) != "Cc").strip()


async def _baseline_recorded(request: web.Request, account: str) -> None:
    """503 until the bridge's first poll of `account` has recorded what Munsit holds (then
    remembered)."""
    seen = request.app[BASELINE_SEEN]
    if account in seen:
        return
    if not await _host(request).baseline_recorded(account):
        raise GatewayError(
            503,
            NOT_READY,
            "the bridge has not finished its first poll of Munsit yet; try again in a few seconds",
            retry_after=NOT_READY_RETRY_AFTER,
        )
    seen.add(account)


async def _accepted(
    request: web.Request,
    host: GatewayHost,
    client: ClientConfig,
    audio: AudioPart,
    answer: Answer,
    callback: Callback | None,
) -> web.Response:
    body: Any = None
    with contextlib.suppress(ValueError):
        body = json.loads(answer.body)
    record_id = body.get("denoiseId") if isinstance(body, dict) else None
    if not isinstance(record_id, str) or not record_id:
        log.error("gateway: Munsit accepted a submission without a denoiseId", client=client.id)
        raise GatewayError(502, BAD_ANSWER, "Munsit answered 200 without a denoiseId")
    assert isinstance(body, dict)
    key = record_key(host.settings.client_account(client), record_id)
    now = host.clock.now()
    callback_id = "cb_" + secrets.token_urlsafe(16) if callback is not None else None
    _, dot, ext = audio.file_name.rpartition(".")
    stamp = _iso(now)
    record = {
        "id": record_id,
        "status": "pending",
        "file_name": audio.file_name,
        "audio_size": audio.size,
        "audio_format": ext.lower() if dot else None,
        "audio_url": None,
        "error": None,
        "created_at": stamp,
        "updated_at": stamp,
    }
    job = Job(
        record_id=key,
        client_id=client.id,
        submitted_at=now,
        callback_id=callback_id,
        callback=callback,
        record=record,
    )
    try:
        await host.jobs.register_job(job, now=now)
    except Exception as exc:  # the job exists at Munsit: say which, so it can be looked up
        log.error(
            "gateway: job submitted but not registered",
            client=client.id,
            record_id=record_id,
            error=type(exc).__name__,
        )
        raise GatewayError(
            500,
            NOT_REGISTERED,
            f"Munsit accepted the job as {record_id}, but the bridge could not record it:"
            " no callback will be sent for it",
        ) from None
    host.watch(key)
    log.info(
        "gateway: job submitted",
        client=client.id,
        record_id=record_id,
        size=audio.size,
        callback=redact_url(callback.url) if callback else None,
        callback_id=callback_id,
    )
    return web.json_response({**body, "callback_id": callback_id})


async def _own_job(request: web.Request, client: ClientConfig) -> Job:
    settings = _host(request).settings
    key = record_key(settings.client_account(client), request.match_info["id"])
    job = await _host(request).jobs.job(key)
    if job is None or job.client_id != client.id:
        raise GatewayError(404, *NOT_FOUND)
    return job


def _record(job: Job) -> dict[str, Any]:
    if job.record is not None:
        return dict(job.record)
    return {"id": split_key(job.record_id)[1], "status": "pending"}


async def _one(request: web.Request) -> web.StreamResponse:
    client = authenticate(request)
    return web.json_response(_record(await _own_job(request, client)))


def _query_int(request: web.Request, name: str, minimum: int) -> int | None:
    raw = request.query.get(name)
    if raw is None:
        return None
    if not (raw.isascii() and raw.isdigit()) or int(raw) < minimum:
        raise GatewayError(400, BAD_QUERY, f"{name} must be an integer >= {minimum}")
    return int(raw)


async def _list(request: web.Request) -> web.StreamResponse:
    """The client's jobs, newest first, Munsit's bare array (`offset`, `limit` as Munsit's:
    without `limit`, all of them)."""
    client = authenticate(request)
    offset = _query_int(request, "offset", 0) or 0
    limit = _query_int(request, "limit", 1)
    jobs = _host(request).jobs
    wanted = None if limit is None else offset + limit
    found: list[Job] = []
    before: str | None = None
    while wanted is None or len(found) < wanted:
        batch = LIST_BATCH if wanted is None else min(LIST_BATCH, wanted - len(found))
        page = await jobs.client_jobs(client.id, limit=batch, before=before)
        found += page
        if len(page) < batch:
            break
        before = page[-1].record_id
    return web.json_response([_record(job) for job in found[offset:wanted]])


async def _progress(request: web.Request) -> web.StreamResponse:
    """Munsit's progress stream of the client's job, relayed as it comes."""
    client = authenticate(request)
    job = await _own_job(request, client)
    up, key = upstream_of(_host(request).settings, client)
    try:
        async with open_progress(
            _host(request).upstream,
            base_url=up.base_url,
            api_key=key,
            record_id=split_key(job.record_id)[1],
            timeout_s=up.request_timeout_s,
        ) as upstream:
            if upstream.status != 200:
                answer = Answer(upstream.status, await read_answer(upstream), "")
                return _pass_through(request, answer, client)
            response = web.StreamResponse(
                headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
            )
            await response.prepare(request)
            with contextlib.suppress(ConnectionError, aiohttp.ClientError):
                async for chunk in upstream.content.iter_any():
                    await response.write(chunk)
                await response.write_eof()
            return response
    except SubmitUnreachable:
        raise GatewayError(502, UNREACHABLE, "Munsit could not be reached") from None
    except SubmitTimeout:
        raise GatewayError(504, NO_ANSWER, "Munsit did not answer in time") from None
