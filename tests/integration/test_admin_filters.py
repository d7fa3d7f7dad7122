"""The admin API's translation of the new filters and of bulk retry: query strings and JSON
bodies become the operations' filters, and their answers and errors come back as JSON with
the right status. (What the operations do is tested once, in tests/ops.)"""

from __future__ import annotations

from typing import Any

from bridge.models import iso_utc
from tests.integration import test_admin_api
from tests.integration.test_admin_api import World, call, deliver, fails, running, settle, spread

world = test_admin_api.world  # the fixture: a simulator, receivers and a database file


async def test_deliveries_filters_by_type_record_and_time(world: World) -> None:
    async with running(await spread(world), world.clock) as (svc, http):
        await settle(svc, world.clock)
        every: list[dict[str, Any]] = (await call(http, "GET", "/api/deliveries"))["deliveries"]
        record = every[-1]["record_id"]
        of_record = await call(http, "GET", f"/api/deliveries?record={record}")
        failed_type = await call(http, "GET", "/api/deliveries?type=denoise.failed")
        queued = every[0]["created_at"]
        since = await call(http, "GET", f"/api/deliveries?since={queued}")
        until = await call(http, "GET", f"/api/deliveries?until={queued}")
        later = iso_utc(world.clock.now() + 60)
        nothing = await call(http, "GET", f"/api/deliveries?since={later}")
        await fails(http, "GET", "/api/deliveries?since=", 400, "since", "must not be empty")
        await fails(http, "GET", "/api/deliveries?until=soon", 400, "until", "'soon'", "ISO 8601")
        await fails(http, "GET", "/api/deliveries?type=denoise.x", 400, "type", "'denoise.x'")
    assert {d["record_id"] for d in of_record["deliveries"]} == {record}
    assert {d["id"] for d in of_record["deliveries"]} == {
        d["id"] for d in every if d["record_id"] == record
    }
    assert [d["event_type"] for d in failed_type["deliveries"]] == ["denoise.failed"]
    assert len(since["deliveries"]) + len(until["deliveries"]) == len(every)
    assert nothing["deliveries"] == []


async def test_events_search_by_record(world: World) -> None:
    [one, _] = world.sim.add_records(2, status="success")
    async with running(world.settings(), world.clock) as (svc, http):
        await svc.poller.tick()
        found = await call(http, "GET", f"/api/events?record={one['id']}")
        every = await call(http, "GET", "/api/events")
        none = await call(http, "GET", "/api/events?record=no-such-record")
    assert found["events"] == [e for e in every["events"] if e["record_id"] == one["id"]]
    assert found["events"] and len(found["events"]) < len(every["events"])
    assert none == {"events": [], "next_before": None}


async def test_bulk_retry_translates_the_filter_and_its_errors(world: World) -> None:
    async with running(await spread(world), world.clock) as (svc, http):
        await settle(svc, world.clock)
        refused = [
            await fails(http, "POST", "/api/retry", 400, "state", json={"state": "pending"}),
            await fails(http, "POST", "/api/retry", 404, "'nobody'", json={"subscriber": "nobody"}),
            await fails(http, "POST", "/api/retry", 400, "until", json={"until": ""}),
            await fails(http, "POST", "/api/retry", 400, "colour", json={"colour": "red"}),
            await fails(
                http,
                "POST",
                "/api/retry",
                400,
                "body",
                data=b"[]",
                headers={"Content-Type": "application/json"},
            ),
        ]
        none = await call(http, "POST", "/api/retry", json={"subscriber": "rx"})
        world.other.default_status = 200
        some = await call(http, "POST", "/api/retry", json={"subscriber": "down", "record": ""})
        again = await call(http, "POST", "/api/retry")  # no body: every dead letter
        await deliver(svc, world.clock)
        failed = await call(http, "GET", "/api/deliveries?state=failed")
    assert len(refused) == 5
    assert (none, some, again) == ({"retried": 0}, {"retried": 2}, {"retried": 0})
    assert failed["deliveries"] == []
