"""A faithful stand-in for the Munsit denoise API, with a control surface for tests and demos.

It behaves as `munsit-api.md` documents: newest-first offset pagination, multipart upload
validation, the progress event stream, `x-api-key` auth and Munsit's error bodies. Jobs
advance pending → success/failed on the injected clock.
"""

from __future__ import annotations

import asyncio
import heapq
import json
import random
import uuid
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from bridge.clock import Clock, SystemClock, sleep_or_event
from bridge.upstream import sim_media

CDN = "https://cdn.munsit.com"
IDLE_CLOSE_S = 15 * 60
FAULT_KINDS = ("429", "500", "502", "latency", "malformed", "non_array", "drop")
ENDPOINTS = ("list", "submit", "progress")
DECODE_ERROR = "Could not decode audio stream"


def _err(status: int, code: str | int, message: str) -> web.Response:
    return web.json_response({"errorCode": code, "errorMessage": message}, status=status)


def _iso_ms(ms: int) -> str:
    return datetime.fromtimestamp(ms // 1000, UTC).strftime("%Y-%m-%dT%H:%M:%S") + (
        f".{ms % 1000:03d}Z"
    )


@dataclass
class _Job:
    rec: dict[str, Any]
    ext: str
    finish_at: float | None = None
    fails: bool = False
    watchers: set[asyncio.Event] = field(default_factory=set)


@dataclass(frozen=True)
class _Fault:
    kind: str
    endpoint: str
    retry_after: str | None
    latency_s: float


class Simulator:
    """The fake Munsit API. Python methods and `/_sim/*` routes control it."""

    def __init__(
        self,
        *,
        api_key: str,
        clock: Clock,
        processing_s: float = 3.0,
        user_id: str = "user_sim",
        max_upload_bytes: int = 200 * 1024 * 1024,
        seed: int = 0,
    ) -> None:
        self.api_key = api_key
        self.clock = clock
        self.processing_s = processing_s
        self.user_id = user_id
        self.max_upload_bytes = max_upload_bytes
        self.balance: int | None = None
        self.list_requests = 0
        self.request_log: list[tuple[str, str, int]] = []
        self._rand = random.Random(seed)
        self._jobs: dict[str, _Job] = {}
        self._order: list[str] = []  # oldest → newest
        self._due: list[tuple[float, int, str]] = []
        self._tick = 0
        self._last_ms = 0
        self._faults: deque[_Fault] = deque()
        self._drift = (0, 0)
        self._extra: dict[str, Any] = {}

    # ---- control surface -------------------------------------------------------------

    def add_records(self, count: int, *, status: str = "success") -> list[dict[str, Any]]:
        """Bulk-create records, oldest first; pending ones succeed after `processing_s`."""
        now_ms = int(self.clock.now() * 1000)
        created = []
        for i in range(count):
            n = len(self._order) + 1
            ext = ("wav", "mp3", "mp4", "flac")[n % 4]
            job = self._new_job(
                f"recording-{n:05d}.{ext}",
                ext,
                self._rand.randint(50_000, 20_000_000),
                created_ms=now_ms - (count - 1 - i),
            )
            if status == "pending":
                self._schedule(job)
            else:
                self._apply(job, status, None, at_ms=int(job.rec["created_at_ms"]))
            created.append(self._public(job))
        return created

    def submit(self, file_name: str, data: bytes) -> dict[str, Any]:
        """Queue a job as `POST /denoise` does after validation; returns the record."""
        ext = sim_media.extension(file_name)
        job = self._new_job(file_name, ext, len(data), duration=sim_media.duration_s(ext, data))
        job.fails = not sim_media.looks_like(ext, data)
        self._schedule(job)
        return self._public(job)

    def set_status(self, record_id: str, status: str, *, error: str | None = None) -> None:
        """Set any status now (unknown ones too, to simulate schema drift)."""
        job = self._job(record_id)
        job.finish_at = None
        if status == "pending":
            self._schedule(job)
        self._apply(job, status, error, at_ms=int(self.clock.now() * 1000))

    def remove(self, record_id: str) -> None:
        job = self._job(record_id)
        del self._jobs[record_id]
        self._order.remove(record_id)
        for watcher in job.watchers:
            watcher.set()  # its open progress streams end

    def inject_fault(
        self,
        kind: str,
        *,
        count: int = 1,
        retry_after: str | None = None,
        latency_s: float = 0.0,
        endpoint: str = "list",
    ) -> None:
        """The next `count` requests to `endpoint` (after auth) get this fault."""
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {kind!r} (known: {', '.join(FAULT_KINDS)})")
        if endpoint not in ENDPOINTS:
            raise ValueError(f"unknown endpoint {endpoint!r} (known: {', '.join(ENDPOINTS)})")
        self._faults.extend(_Fault(kind, endpoint, retry_after, latency_s) for _ in range(count))

    def drift(self, *, inserts_per_fetch: int, fetches: int) -> None:
        """After each of the next `fetches` list responses, insert new pending jobs on top."""
        self._drift = (inserts_per_fetch, fetches)

    def add_field(self, name: str, value: Any) -> None:
        """Schema drift: every record returned from now on carries this extra field."""
        self._extra[name] = value

    @property
    def records(self) -> list[dict[str, Any]]:
        """Copies of every record, newest first, as the API would return them now."""
        self._advance()
        return [self._public(self._jobs[rid]) for rid in reversed(self._order)]

    # ---- job mechanics ---------------------------------------------------------------

    def _new_job(
        self,
        file_name: str,
        ext: str,
        size: int,
        *,
        created_ms: int | None = None,
        duration: float | None = None,
    ) -> _Job:
        ms = max(
            created_ms if created_ms is not None else int(self.clock.now() * 1000),
            self._last_ms + 1,
        )
        self._last_ms = ms
        rid = str(uuid.UUID(int=self._rand.getrandbits(128), version=4))
        out_ext = "wav" if sim_media.source_type(ext) == "video" else ext
        rec = {
            "id": rid,
            "user_id": self.user_id,
            "transaction_id": str(uuid.UUID(int=self._rand.getrandbits(128), version=4)),
            "audio_url": None,
            "original_audio_url": f"{CDN}/uploads/{rid}.{ext}",
            "file_name": file_name,
            "audio_duration": duration if duration is not None else round(size * 8 / 128_000, 3),
            "audio_size": size,
            "audio_format": ext,
            "source_type": sim_media.source_type(ext) or "audio",
            "status": "pending",
            "error": None,
            "created_at": _iso_ms(ms),
            "updated_at": _iso_ms(ms),
            "created_at_ms": ms,
            "_out_ext": out_ext,
        }
        job = _Job(rec, ext)
        self._jobs[rid] = job
        self._order.append(rid)
        return job

    def _schedule(self, job: _Job) -> None:
        job.finish_at = job.rec["created_at_ms"] / 1000 + self.processing_s
        if job.rec["status"] == "pending" and job.finish_at <= self.clock.now():
            job.finish_at = self.clock.now() + self.processing_s  # re-queued by set_status
        self._tick += 1
        heapq.heappush(self._due, (job.finish_at, self._tick, job.rec["id"]))

    def _apply(self, job: _Job, status: str, error: str | None, *, at_ms: int) -> None:
        rec = job.rec
        rec["status"] = status
        rec["updated_at"] = _iso_ms(at_ms)
        rec["audio_url"] = (
            f"{CDN}/denoised/{rec['id']}.{rec['_out_ext']}" if status == "success" else None
        )
        rec["error"] = (error or DECODE_ERROR) if status == "failed" else None
        for watcher in job.watchers:
            watcher.set()

    def _advance(self) -> None:
        now = self.clock.now()
        while self._due and self._due[0][0] <= now:
            finish_at, _, rid = heapq.heappop(self._due)
            job = self._jobs.get(rid)
            if job is None or job.finish_at != finish_at or job.rec["status"] != "pending":
                continue
            job.finish_at = None
            self._apply(
                job, "failed" if job.fails else "success", None, at_ms=int(finish_at * 1000)
            )

    def _job(self, record_id: str) -> _Job:
        job = self._jobs.get(record_id)
        if job is None:
            raise KeyError(f"no record {record_id}")
        return job

    def _public(self, job: _Job) -> dict[str, Any]:
        rec = {k: v for k, v in job.rec.items() if k not in ("created_at_ms", "_out_ext")}
        rec.update(self._extra)
        return rec

    # ---- HTTP ------------------------------------------------------------------------

    def make_app(self) -> web.Application:
        app = web.Application(middlewares=[self._log_middleware])
        app.router.add_get("/denoise", self._list)
        app.router.add_post("/denoise", self._submit)
        app.router.add_get("/denoise/{id}/progress", self._progress)
        app.router.add_post("/_sim/records", self._ctl_records)
        app.router.add_post("/_sim/records/{id}/status", self._ctl_status)
        app.router.add_delete("/_sim/records/{id}", self._ctl_remove)
        app.router.add_post("/_sim/faults", self._ctl_faults)
        app.router.add_post("/_sim/drift", self._ctl_drift)
        app.router.add_get("/_sim/stats", self._ctl_stats)
        return app

    @web.middleware
    async def _log_middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if request.path.startswith("/denoise"):
            if request.headers.get("x-api-key") != self.api_key:
                if request.method == "GET" and request.path == "/denoise":
                    self.list_requests += 1
                response: web.StreamResponse = _err(401, "40101", "Invalid or missing API key")
            else:
                response = await handler(request)
        else:
            response = await handler(request)
        self.request_log.append((request.method, request.path_qs, response.status))
        return response

    async def _fault(self, request: web.Request, endpoint: str) -> web.StreamResponse | None:
        fault = next((f for f in self._faults if f.endpoint == endpoint), None)
        if fault is None:
            return None
        self._faults.remove(fault)
        if fault.kind == "latency":
            await self.clock.sleep(fault.latency_s)
            return None
        if fault.kind == "429":
            response = _err(429, 42901, "Too many concurrent requests")
            if fault.retry_after is not None:
                response.headers["Retry-After"] = fault.retry_after
            return response
        if fault.kind == "500":
            return _err(500, "50001", "Internal server error")
        if fault.kind == "502":
            return _err(502, "50202", "Upstream error")
        if fault.kind == "malformed":
            return web.Response(body=b'[{"id": "0b7c', content_type="application/json")
        if fault.kind == "non_array":
            return web.json_response({"data": [], "message": "unexpected"})
        # drop: close the connection without answering
        if request.transport is not None:
            request.transport.close()
        raise asyncio.CancelledError

    async def _list(self, request: web.Request) -> web.StreamResponse:
        self.list_requests += 1
        fault = await self._fault(request, "list")
        if fault is not None:
            return fault
        try:
            offset = _int_param(request, "offset", 0, minimum=0) or 0
            limit = _int_param(request, "limit", None, minimum=1)
        except ValueError as exc:
            return _err(400, "40005", str(exc))
        self._advance()
        top = len(self._order) - 1 - offset
        bottom = -1 if limit is None else max(-1, top - limit)
        body = [self._public(self._jobs[self._order[i]]) for i in range(top, bottom, -1)]
        per_fetch, fetches = self._drift
        if fetches > 0:
            self._drift = (per_fetch, fetches - 1)
            self.add_records(per_fetch, status="pending")
        return web.json_response(body)

    async def _submit(self, request: web.Request) -> web.StreamResponse:
        fault = await self._fault(request, "submit")
        if fault is not None:
            return fault
        missing = _err(400, "40001", "audio is required and must be a file")
        if not request.content_type.startswith("multipart/"):
            return missing
        reader = await request.multipart()
        async for part in reader:
            if getattr(part, "name", None) != "audio" or not getattr(part, "filename", None):
                continue
            name = str(part.filename)  # type: ignore[union-attr]
            ext = sim_media.extension(name)
            if sim_media.source_type(ext) is None:
                allowed = ", ".join(sim_media.AUDIO_FORMATS + sim_media.VIDEO_FORMATS)
                return _err(400, "40002", f"Unsupported file format '{ext}'. Allowed: {allowed}")
            data = bytearray()
            while chunk := await part.read_chunk(65536):  # type: ignore[union-attr]
                data += chunk
                if len(data) > self.max_upload_bytes:
                    mb = self.max_upload_bytes // (1024 * 1024)
                    return _err(400, "40003", f"File exceeds the {mb} MB limit")
            if sim_media.duration_s(ext, bytes(data)) > sim_media.MAX_DURATION_S:
                return _err(400, "40004", "Audio duration exceeds the 15 minute limit")
            if self.balance is not None:
                if self.balance <= 0:
                    return _err(402, "40201", "Insufficient wallet balance")
                self.balance -= 1
            rec = self.submit(name, bytes(data))
            return web.json_response({"jobId": rec["id"], "denoiseId": rec["id"]})
        return missing

    async def _progress(self, request: web.Request) -> web.StreamResponse:
        fault = await self._fault(request, "progress")
        if fault is not None:
            return fault
        job = self._jobs.get(request.match_info["id"])
        if job is None:
            return _err(404, "40401", "Denoise record not found")
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        await response.prepare(request)
        changed = asyncio.Event()
        job.watchers.add(changed)
        try:
            last_message = self.clock.now()
            while job.rec["id"] in self._jobs:
                self._advance()
                status = job.rec["status"]
                if status in ("success", "failed"):
                    await _send(response, self._terminal_message(job))
                    break
                if status == "pending" and job.finish_at is not None:
                    started = job.finish_at - self.processing_s
                    done = (self.clock.now() - started) / self.processing_s
                    pct = max(0, min(99, int(done * 100)))
                    await _send(
                        response, {"stage": "processing", "pct": pct, "message": "Denoising"}
                    )
                    last_message = self.clock.now()
                elif self.clock.now() - last_message >= IDLE_CLOSE_S:
                    break
                changed.clear()
                await sleep_or_event(self.clock, max(self.processing_s / 5, 0.01), changed)
        finally:
            job.watchers.discard(changed)
        return response

    def _terminal_message(self, job: _Job) -> dict[str, Any]:
        rec = job.rec
        if rec["status"] == "success":
            return {"stage": "done", "url": rec["audio_url"], "denoiseId": rec["id"]}
        return {"stage": "error", "message": rec["error"]}

    # ---- control routes --------------------------------------------------------------

    async def _ctl_records(self, request: web.Request) -> web.StreamResponse:
        body = await _json_body(request)
        count, status = body.get("count", 1), body.get("status", "success")
        if not isinstance(count, int) or count < 1 or not isinstance(status, str):
            return web.json_response({"error": "count must be an integer >= 1"}, status=400)
        return web.json_response(self.add_records(count, status=status))

    async def _ctl_status(self, request: web.Request) -> web.StreamResponse:
        body = await _json_body(request)
        if not isinstance(body.get("status"), str):
            return web.json_response({"error": "status is required"}, status=400)
        try:
            self.set_status(request.match_info["id"], body["status"], error=body.get("error"))
        except KeyError as exc:
            return web.json_response({"error": str(exc.args[0])}, status=404)
        return web.json_response(self._public(self._jobs[request.match_info["id"]]))

    async def _ctl_remove(self, request: web.Request) -> web.StreamResponse:
        try:
            self.remove(request.match_info["id"])
        except KeyError as exc:
            return web.json_response({"error": str(exc.args[0])}, status=404)
        return web.json_response({"removed": request.match_info["id"]})

    async def _ctl_faults(self, request: web.Request) -> web.StreamResponse:
        body = await _json_body(request)
        try:
            self.inject_fault(
                str(body.get("kind")),
                count=int(body.get("count", 1)),
                retry_after=body.get("retry_after"),
                latency_s=float(body.get("latency_s", 0.0)),
                endpoint=str(body.get("endpoint", "list")),
            )
        except (ValueError, TypeError) as exc:
            return web.json_response({"error": str(exc)}, status=400)
        return web.json_response({"queued": len(self._faults)})

    async def _ctl_drift(self, request: web.Request) -> web.StreamResponse:
        body = await _json_body(request)
        per_fetch, fetches = body.get("inserts_per_fetch"), body.get("fetches")
        if not isinstance(per_fetch, int) or not isinstance(fetches, int) or per_fetch < 0:
            return web.json_response(
                {"error": "inserts_per_fetch and fetches are integers"}, status=400
            )
        self.drift(inserts_per_fetch=per_fetch, fetches=fetches)
        return web.json_response({"inserts_per_fetch": per_fetch, "fetches": fetches})

    async def _ctl_stats(self, request: web.Request) -> web.StreamResponse:
        self._advance()
        pending = sum(1 for j in self._jobs.values() if j.rec["status"] == "pending")
        return web.json_response(
            {"records": len(self._order), "pending": pending, "list_requests": self.list_requests}
        )


def _int_param(request: web.Request, name: str, default: int | None, *, minimum: int) -> int | None:
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"{name} must be an integer >= {minimum}") from None
    if value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}")
    return value


async def _json_body(request: web.Request) -> dict[str, Any]:
    try:
        body = await request.json() if request.can_read_body else {}
    except json.JSONDecodeError:
        return {}
    return body if isinstance(body, dict) else {}


async def _send(response: web.StreamResponse, message: dict[str, Any]) -> None:
    await response.write(f"data: {json.dumps(message)}\n\n".encode())


async def serve(
    *, host: str, port: int, api_key: str, jobs: int, processing_s: float = 5.0
) -> None:
    """Run the simulator on the real clock until cancelled (`munsit-bridge simulate`)."""
    sim = Simulator(api_key=api_key, clock=SystemClock(), processing_s=processing_s)
    pending = min(3, jobs // 5)
    sim.add_records(jobs - pending, status="success")
    sim.add_records(pending, status="pending")
    runner = web.AppRunner(sim.make_app(), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    port = runner.addresses[0][1]
    print(
        f"Munsit simulator on http://{host}:{port} (x-api-key: {api_key}), {jobs} records; "
        "control routes under /_sim/",
        flush=True,
    )
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()
