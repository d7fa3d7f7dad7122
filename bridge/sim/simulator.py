"""A faithful stand-in for the Munsit denoise API, with a control surface for tests and demos.

It behaves as `munsit-api.md` documents: newest-first offset pagination, multipart upload
validation, the progress event stream, `x-api-key` auth and Munsit's error bodies. Jobs go
pending → success/failed lazily, on the injected clock.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import heapq
import math
import random
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from aiohttp import BodyPartReader, web

from bridge.clock import Clock, SystemClock, sleep_or_event
from bridge.gateway.multipart import multipart_reader
from bridge.sim import media as sim_media
from bridge.sim import poison as sim_poison
from bridge.sim.media import NOT_FOUND, Handler, Job, UnknownRecord, control, get

IDLE_CLOSE_S = 15 * 60
FAULT_KINDS = ("429", "500", "502", "latency", "malformed", "non_array", "drop")
ENDPOINTS = ("list", "submit", "progress")
STATUSES = ("pending", "success", "failed")
DECODE_ERROR = "Could not decode audio stream"
_SAMPLE_FORMATS = ("wav", "mp3", "mp4", "flac", "m4a", "webm")
_CLOSING = web.AppKey("closing", asyncio.Event)
_UUID4_MASK = ~(0xC000 << 48 | 0xF000 << 64) & (1 << 128) - 1
_UUID4_BITS = 0x8000 << 48 | 0x4000 << 64


class _Dropped(Exception):
    """Raised by the `drop` fault; the middleware hangs up without answering."""


@dataclass(frozen=True, slots=True)
class _Fault:
    kind: str
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
        self.balance: int | None = None  # jobs the wallet can pay for; None: unlimited
        self.list_requests = 0
        self.submissions = 0  # jobs created by `POST /denoise` or `submit()`
        self.request_log: list[tuple[str, str, int]] = []  # status 0: dropped, no answer
        self._rand = random.Random(seed)
        self._jobs: dict[str, Job] = {}
        self._order: list[Job] = []  # oldest → newest; pages are read from the end
        self._due: list[tuple[int, int, str]] = []  # (finish_ms, seq, id) of scheduled jobs
        self._seq = 0
        self._last_ms = -1
        self._pending = 0
        self._faults: dict[str, deque[_Fault]] = {}
        self._drift = (0, 0)
        self._extra: dict[str, Any] = {}
        self._poison: dict[str, deque[sim_poison.Poison]] = {}
        self._raw: list[bytes] = []  # raw record texts listed on top, oldest first
        self.poison_served = 0

    # ---- control surface -------------------------------------------------------------

    def add_records(self, count: int, *, status: str = "success") -> list[dict[str, Any]]:
        """Bulk-create records 1 ms apart ending now; returned oldest first. Pending ones
        succeed `processing_s` after their creation."""
        if status not in STATUSES:
            raise ValueError(f"status must be one of {', '.join(STATUSES)}")
        if count < 0:
            raise ValueError("count must be >= 0")
        now_ms = self._now_ms()
        created = []
        for i in range(count):
            ext = _SAMPLE_FORMATS[self._seq % len(_SAMPLE_FORMATS)]
            size = 50_000 + int(self._rand.random() * 13_950_000)  # < 15 min at 128 kbit/s
            name = f"recording-{self._seq + 1:06d}.{ext}"
            job = self._new_job(name, ext, size, sim_media.estimate_s(size), now_ms - count + 1 + i)
            if status == "pending":
                self._schedule(job)
            else:
                self._apply(job, status, None, job.created_ms)
            created.append(self._public(job))
        return created

    def submit(self, file_name: str, data: bytes) -> dict[str, Any]:
        """Queue a job as `POST /denoise` does after validation; returns the record."""
        return self._accept(file_name, data, len(data))

    def _accept(self, file_name: str, head: bytes, size: int) -> dict[str, Any]:
        ext = sim_media.extension(file_name)
        if sim_media.source_type(ext) is None:
            raise ValueError(f"unsupported format {ext!r}")
        duration = sim_media.duration_s(ext, head, size)
        job = self._new_job(file_name, ext, size, duration, self._now_ms())
        job.fails = not sim_media.looks_like(ext, head)
        self._schedule(job)
        self.submissions += 1
        return self._public(job)

    def set_status(self, record_id: str, status: str, *, error: str | None = None) -> None:
        """Set any status now (unknown ones too); the job's own outcome no longer happens."""
        job = self._job(record_id)
        job.finish_ms = None
        self._apply(job, status, error, self._now_ms())

    def remove(self, record_id: str) -> None:
        """Delete a record: later pages shift up by one."""
        job = self._job(record_id)
        del self._jobs[record_id]
        del self._order[bisect.bisect_left(self._order, job.seq, key=lambda j: j.seq)]
        if job.status == "pending":
            self._pending -= 1
        job.finish_ms = None
        job.wake()

    def inject_fault(
        self,
        kind: str,
        *,
        count: int = 1,
        retry_after: str | None = None,
        latency_s: float = 0.0,
        endpoint: str = "list",
    ) -> None:
        """The next `count` authenticated requests to `endpoint` get this fault, in FIFO order."""
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {kind!r} (known: {', '.join(FAULT_KINDS)})")
        if endpoint not in ENDPOINTS:
            raise ValueError(f"unknown endpoint {endpoint!r} (known: {', '.join(ENDPOINTS)})")
        if count < 0 or latency_s < 0:
            raise ValueError("count and latency_s must be >= 0")
        queue = self._faults.setdefault(endpoint, deque())
        queue.extend(_Fault(kind, retry_after, latency_s) for _ in range(count))

    def poison(
        self,
        body: bytes | Sequence[tuple[bytes, int]],
        *,
        endpoint: str = "list",
        count: int = 1,
        content_type: str | None = None,
    ) -> None:
        """The next `count` authenticated requests to `endpoint` (`list` or `progress`) are
        answered 200 with this raw body: bytes, or (part, times) pairs streamed in turn."""
        if count < 0:
            raise ValueError("count must be >= 0")
        poison = sim_poison.make_poison(body, endpoint, content_type)
        self._poison.setdefault(endpoint, deque()).extend([poison] * count)

    def add_raw_record(self, raw: bytes) -> None:
        """Poison that stays, as a broken record would: this raw JSON text is listed as the
        newest record from now on, until `clear_raw_records()`."""
        self._raw.append(raw)

    def clear_raw_records(self) -> None:
        self._raw.clear()

    def drift(self, *, inserts_per_fetch: int, fetches: int) -> None:
        """After each of the next `fetches` list responses, insert new pending jobs on top."""
        if inserts_per_fetch < 0 or fetches < 0:
            raise ValueError("inserts_per_fetch and fetches must be >= 0")
        self._drift = (inserts_per_fetch, fetches)

    def add_field(self, name: str, value: Any) -> None:
        """Schema drift: every record returned from now on carries this extra field."""
        self._extra[name] = value

    @property
    def records(self) -> list[dict[str, Any]]:
        """Copies of every record, newest first, as the API would return them now."""
        self._advance()
        return [self._public(job) for job in reversed(self._order)]

    # ---- job mechanics ---------------------------------------------------------------

    def _now_ms(self) -> int:
        # the microsecond of slack absorbs float error in clock arithmetic
        return math.floor(self.clock.now() * 1000 + 1e-3)

    def _uuid(self) -> str:
        # what str(uuid.UUID(int=bits, version=4)) gives, several times faster
        h = f"{self._rand.getrandbits(128) & _UUID4_MASK | _UUID4_BITS:032x}"
        return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"

    def _new_job(
        self, file_name: str, ext: str, size: int, duration: float, created_ms: int
    ) -> Job:
        # created_at never repeats, so "newest first" is a strict order
        ms = max(created_ms, self._last_ms + 1)
        self._last_ms = ms
        self._seq += 1
        job = Job(self._seq, self._uuid(), self._uuid(), file_name, ext, size, duration, ms, ms)
        self._jobs[job.id] = job
        self._order.append(job)
        self._pending += 1
        return job

    def _schedule(self, job: Job) -> None:
        job.finish_ms = job.created_ms + round(self.processing_s * 1000)
        heapq.heappush(self._due, (job.finish_ms, job.seq, job.id))

    def _apply(self, job: Job, status: str, error: str | None, at_ms: int) -> None:
        self._pending += (status == "pending") - (job.status == "pending")
        job.status = status
        job.updated_ms = max(at_ms, job.created_ms)
        if status == "failed":
            job.error = error or DECODE_ERROR
        else:
            job.error = None if status in STATUSES else error
        job.wake()

    def _advance(self) -> None:
        now_ms = self._now_ms()
        while self._due and self._due[0][0] <= now_ms:
            finish_ms, _, rid = heapq.heappop(self._due)
            job = self._jobs.get(rid)
            if job is not None and job.finish_ms == finish_ms:
                job.finish_ms = None
                self._apply(job, "failed" if job.fails else "success", None, finish_ms)

    def _job(self, record_id: str) -> Job:
        job = self._jobs.get(record_id)
        if job is None:
            raise UnknownRecord(record_id)
        return job

    def _public(self, job: Job) -> dict[str, Any]:
        record = job.record(self.user_id)
        if self._extra:
            record.update(self._extra)
        return record

    # ---- the API -----------------------------------------------------------------------

    def make_app(self) -> web.Application:
        """The API (`/denoise…`, key required) and the control routes (`/_sim/…`, no key)."""
        app = web.Application(middlewares=[self._middleware])
        app[_CLOSING] = asyncio.Event()
        app.on_shutdown.append(_on_shutdown)
        app.router.add_get("/denoise", self._list)
        app.router.add_post("/denoise", self._submit)
        app.router.add_get("/denoise/{id}/progress", self._progress)
        app.router.add_post("/_sim/records", control(self._ctl_records))
        app.router.add_post("/_sim/records/{id}/status", control(self._ctl_status))
        app.router.add_delete("/_sim/records/{id}", control(self._ctl_remove))
        app.router.add_post("/_sim/faults", control(self._ctl_faults))
        app.router.add_post("/_sim/drift", control(self._ctl_drift))
        app.router.add_post("/_sim/poison", control(self._ctl_poison))
        app.router.add_post("/_sim/raw-records", control(self._ctl_raw_records))
        app.router.add_delete("/_sim/raw-records", control(self._ctl_raw_records))
        app.router.add_get("/_sim/stats", control(self._ctl_stats))
        return app

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        path = request.path
        if request.method == "GET" and path == "/denoise":
            self.list_requests += 1
        guarded = path == "/denoise" or path.startswith("/denoise/")
        try:
            if guarded and request.headers.get("x-api-key") != self.api_key:
                response: web.StreamResponse = sim_media.error(
                    401, "40101", "Invalid or missing API key"
                )
            else:
                response = await handler(request)
        except _Dropped:
            self.request_log.append((request.method, request.path_qs, 0))
            if request.transport is not None:
                request.transport.close()
            # never sent: aiohttp finds the transport closed and lets it go quietly (444 is
            # nginx's "closed without response", for the access log)
            return web.Response(status=444)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            response = sim_media.error(exc.status, f"{exc.status}00", exc.reason)
            if "Allow" in exc.headers:
                response.headers["Allow"] = exc.headers["Allow"]
        self.request_log.append((request.method, request.path_qs, response.status))
        return response

    async def _fault(self, request: web.Request, endpoint: str) -> web.StreamResponse | None:
        queue = self._faults.get(endpoint)
        if not queue:
            return None
        fault = queue.popleft()
        if fault.kind == "latency":
            await sleep_or_event(self.clock, fault.latency_s, request.app[_CLOSING])
            return None
        if fault.kind == "drop":
            raise _Dropped
        return sim_media.fault_response(fault.kind, fault.retry_after)

    async def _poisoned(self, request: web.Request, endpoint: str) -> web.StreamResponse | None:
        queue = self._poison.get(endpoint)
        if not queue:
            return None
        self.poison_served += 1
        return await sim_poison.serve(request, queue.popleft(), request.app[_CLOSING])

    async def _list(self, request: web.Request) -> web.StreamResponse:
        if (poisoned := await self._poisoned(request, "list")) is not None:
            return poisoned
        if (faulty := await self._fault(request, "list")) is not None:
            return faulty
        try:
            offset = sim_media.query_int(request, "offset", minimum=0) or 0
            limit = sim_media.query_int(request, "limit", minimum=1)
        except ValueError as exc:
            return sim_media.error(400, "40005", str(exc))
        self._advance()
        raw = self._raw[::-1][offset : None if limit is None else offset + limit]
        offset = max(0, offset - len(self._raw))  # the raw records sit on top
        limit = None if limit is None else limit - len(raw)
        hi = len(self._order) - offset
        lo = 0 if limit is None else max(0, hi - limit)
        body = [self._public(job) for job in reversed(self._order[lo:hi])] if hi > 0 else []
        inserts, fetches = self._drift
        if fetches > 0:
            self._drift = (inserts, fetches - 1)
            self.add_records(inserts, status="pending")
        if self._raw:
            return web.Response(
                body=sim_poison.list_body(raw, body), content_type="application/json"
            )
        return web.json_response(body)

    async def _submit(self, request: web.Request) -> web.StreamResponse:
        if (faulty := await self._fault(request, "submit")) is not None:
            return faulty
        missing = sim_media.error(400, "40001", "audio is required and must be a file")
        if request.content_type != "multipart/form-data":
            return missing
        try:
            async for part in multipart_reader(request):
                if isinstance(part, BodyPartReader) and part.name == "audio":
                    return await self._upload(part) if part.filename else missing
        except ValueError:  # a malformed multipart body
            return missing
        return missing

    async def _upload(self, part: BodyPartReader) -> web.StreamResponse:
        upload = await sim_media.read_upload(part, self.max_upload_bytes)
        if isinstance(upload, web.Response):
            return upload
        if self.balance is not None:
            if self.balance <= 0:
                return sim_media.error(402, "40201", "Insufficient wallet balance")
            self.balance -= 1
        record = self._accept(upload.name, upload.head, upload.size)
        return web.json_response({"jobId": record["id"], "denoiseId": record["id"]})

    async def _progress(self, request: web.Request) -> web.StreamResponse:
        if (poisoned := await self._poisoned(request, "progress")) is not None:
            return poisoned
        if (faulty := await self._fault(request, "progress")) is not None:
            return faulty
        self._advance()
        job = self._jobs.get(request.match_info["id"])
        if job is None:
            return sim_media.error(404, *NOT_FOUND)
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        await response.prepare(request)
        changed = asyncio.Event()
        job.watchers = job.watchers or set()
        job.watchers.add(changed)
        try:
            with contextlib.suppress(ConnectionResetError):  # the client went away
                await self._stream(request, response, job, changed)
        finally:
            job.watchers.discard(changed)
        return response

    async def _stream(
        self, request: web.Request, response: web.StreamResponse, job: Job, changed: asyncio.Event
    ) -> None:
        closing = request.app[_CLOSING]
        step = max(self.processing_s / 5, 0.001)
        last_pct: int | None = None
        last_sent = self.clock.now()
        while not closing.is_set() and self._jobs.get(job.id) is job:
            if request.transport is None or request.transport.is_closing():
                return
            changed.clear()
            self._advance()
            now, status = self.clock.now(), job.status
            if status in ("success", "failed"):
                await sim_media.send_event(response, job.terminal_message())
                return
            if status == "pending":
                pct = max(self._pct(job, now), last_pct or 0)
                if pct != last_pct:
                    await sim_media.send_event(
                        response, {"stage": "processing", "pct": pct, "message": "Denoising"}
                    )
                    last_pct, last_sent = pct, now
            delay = last_sent + IDLE_CLOSE_S - now
            if delay <= 0:
                return
            if status == "pending" and job.finish_ms is not None:  # the next pct, or the end
                delay = min(delay, step, max(job.finish_ms / 1000 - now, 1e-6))
            await sleep_or_event(self.clock, delay, changed, closing)

    def _pct(self, job: Job, now: float) -> int:
        if job.finish_ms is None:
            return 0
        span = job.finish_ms - job.created_ms
        done = (now * 1000 - job.created_ms) / span if span > 0 else 1.0
        return max(0, min(99, math.floor(done * 100 + 1e-6)))

    # ---- control routes (no key; ValueError → 400, unknown id → 404) ------------------

    async def _ctl_records(self, request: web.Request) -> web.StreamResponse:
        body = await sim_media.json_object(request)
        count = get(body, "count", (int,), "an integer >= 1", 1)
        if count < 1:
            raise ValueError("count must be an integer >= 1")
        status = get(body, "status", (str,), "a string", "success")
        return web.json_response(self.add_records(count, status=status))

    async def _ctl_status(self, request: web.Request) -> web.StreamResponse:
        body = await sim_media.json_object(request)
        status = get(body, "status", (str,), "a string")
        error = get(body, "error", (str, type(None)), "a string or null", None)
        record_id = request.match_info["id"]
        self.set_status(record_id, status, error=error)
        return web.json_response(self._public(self._jobs[record_id]))

    async def _ctl_remove(self, request: web.Request) -> web.StreamResponse:
        self.remove(request.match_info["id"])
        return web.json_response({"removed": request.match_info["id"]})

    async def _ctl_faults(self, request: web.Request) -> web.StreamResponse:
        body = await sim_media.json_object(request)
        retry_after = get(body, "retry_after", (str, int, type(None)), "a string or int", None)
        self.inject_fault(
            get(body, "kind", (str,), "a string"),
            count=get(body, "count", (int,), "an integer", 1),
            retry_after=None if retry_after is None else str(retry_after),
            latency_s=float(get(body, "latency_s", (int, float), "a number", 0.0)),
            endpoint=get(body, "endpoint", (str,), "a string", "list"),
        )
        return web.json_response({"queued": sum(len(q) for q in self._faults.values())})

    async def _ctl_drift(self, request: web.Request) -> web.StreamResponse:
        body = await sim_media.json_object(request)
        inserts = get(body, "inserts_per_fetch", (int,), "an integer")
        fetches = get(body, "fetches", (int,), "an integer")
        self.drift(inserts_per_fetch=inserts, fetches=fetches)
        return web.json_response({"inserts_per_fetch": inserts, "fetches": fetches})

    async def _ctl_poison(self, request: web.Request) -> web.StreamResponse:
        body = await sim_media.json_object(request)
        self.poison(
            sim_poison.parts(body),
            endpoint=get(body, "endpoint", (str,), "a string", "list"),
            count=get(body, "count", (int,), "an integer", 1),
            content_type=get(body, "content_type", (str, type(None)), "a string", None),
        )
        return web.json_response({"queued": sum(len(q) for q in self._poison.values())})

    async def _ctl_raw_records(self, request: web.Request) -> web.StreamResponse:
        if request.method == "DELETE":
            self.clear_raw_records()
        else:
            self.add_raw_record(sim_poison.payload(await sim_media.json_object(request)))
        return web.json_response({"raw_records": len(self._raw)})

    async def _ctl_stats(self, request: web.Request) -> web.StreamResponse:
        self._advance()
        return web.json_response(
            {
                "records": len(self._order),
                "pending": self._pending,
                "list_requests": self.list_requests,
            }
        )


async def _on_shutdown(app: web.Application) -> None:
    app[_CLOSING].set()  # ends open progress streams and latency waits, so shutdown is quick


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
    try:
        await web.TCPSite(runner, host, port).start()
        bound = runner.addresses[0][1]
        shown = f"[{host}]" if ":" in host else host
        print(
            f"Munsit simulator on http://{shown}:{bound} (x-api-key: {api_key}), {jobs} records;"
            " control routes under /_sim/",
            flush=True,
        )
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()
