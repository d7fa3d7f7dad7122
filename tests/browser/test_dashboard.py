"""The dashboard (`/ui/`) in a real Chromium over a running `Service`: login, the pages, a
failed delivery retried, a subscriber disabled and enabled, a replay, phone width, and the
refusals (a wrong token, a foreign Origin, a foreign Host)."""

from __future__ import annotations

import re

import aiohttp
import pytest
from playwright.async_api import expect

from bridge.models import DeliveryFilter, DeliveryState
from bridge.ui import pages
from tests.browser.conftest import TOKEN, Dashboard
from tests.integration.helpers import drive

PAGES = ["/ui/", "/ui/subscribers", "/ui/deliveries", "/ui/events"]


async def log_in(board: Dashboard) -> None:
    await board.goto("/ui/login", "login")
    await board.page.get_by_label("Admin token").fill(TOKEN)
    await board.page.get_by_role("button", name="Log in").click()
    await expect(board.page.get_by_role("heading", name="Overview", level=1)).to_be_visible()


async def deliver(board: Dashboard) -> int:
    """Run the dispatcher once on the fake clock. Call it with no live page open: `drive`
    jumps to every sleeper's wake-up, the event stream's heartbeat too."""
    return await drive(board.clock, board.svc.dispatcher.drain_once())


async def leave_live_page(board: Dashboard) -> None:
    """Close the page's event stream (a live page's), so `deliver` drives the dispatcher
    alone."""
    await board.page.goto("about:blank")


async def test_login_refuses_a_wrong_token_then_shows_the_overview(board: Dashboard) -> None:
    page = board.page
    await page.goto(board.base + "/ui/")  # not logged in: sent to the form
    assert page.url.endswith("/ui/login")
    await page.get_by_label("Admin token").fill("not-the-token")
    async with page.expect_response(board.base + "/ui/login") as answer:
        await page.get_by_role("button", name="Log in").click()
    assert (await answer.value).status == 401
    await expect(page.get_by_role("alert")).to_have_text("wrong token")
    await board.shot("wrong-token")

    await log_in(board)
    cookie = next(c for c in await page.context.cookies() if c["name"] == "bridge_ui")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and cookie["path"] == "/ui"
    assert TOKEN not in cookie["value"]
    await expect(page.locator("#role")).to_have_text("leader")
    await board.shot("overview")
    for path in PAGES:
        await board.goto(path)

    await page.get_by_role("button", name="Log out").click()
    await page.goto(board.base + "/ui/subscribers")
    assert page.url.endswith("/ui/login")


async def test_usable_by_keyboard_alone(board: Dashboard) -> None:
    page = board.page
    await page.goto(board.base + "/ui/login")
    await page.keyboard.type(TOKEN)  # the token field has the focus
    await page.keyboard.press("Enter")
    await expect(page.get_by_role("heading", name="Overview", level=1)).to_be_visible()
    for _ in range(10):  # Tab along to the Subscribers link; its focus can be seen
        await page.keyboard.press("Tab")
        if await page.evaluate("document.activeElement.textContent") == "Subscribers":
            break
    outline = await page.evaluate("getComputedStyle(document.activeElement).outlineStyle")
    assert outline not in ("", "none"), outline
    await board.shot("keyboard-focus")
    await page.keyboard.press("Enter")
    await expect(page.get_by_role("heading", name="Subscribers", level=1)).to_be_visible()
    for _ in range(30):
        await page.keyboard.press("Tab")
        if await page.evaluate("document.activeElement.textContent") == "Disable rx":
            break
    await page.keyboard.press("Enter")
    await expect(page.get_by_role("status")).to_have_text("Subscriber rx disabled")
    # no inline event handlers anywhere
    assert await page.locator("[onclick], [onsubmit], [onload], [onchange]").count() == 0


async def test_a_failed_delivery_shows_its_attempts_and_a_retry_delivers_it(
    board: Dashboard,
) -> None:
    board.rx.script = [500, 500]  # both scheduled attempts fail; the retry gets 200
    board.sim.add_records(1, status="success")
    await board.svc.poller.tick()
    for _ in range(5):
        await deliver(board)
        await board.clock.advance(2)
    failed = await board.svc.store.list_deliveries(where=DeliveryFilter(state=DeliveryState.FAILED))
    assert len(failed) == 1
    did = failed[0].id

    await log_in(board)
    page = board.page
    await expect(page.locator("#outbox")).to_contain_text("failed")
    await expect(page.locator("svg.chart rect.fail").first).to_be_attached()
    await board.shot("overview-with-failure")
    await board.goto("/ui/deliveries?state=failed", "failed-deliveries")
    await page.get_by_role("link", name=str(did), exact=True).click()
    await expect(page.get_by_role("heading", name=f"Delivery {did}")).to_be_visible()
    attempts = page.locator("#attempts tbody tr")
    await expect(attempts).to_have_count(2)
    await expect(attempts.first).to_contain_text("500")
    await expect(page.locator("#state")).to_have_text("failed")
    await board.shot("failed-delivery")

    await page.get_by_role("button", name="Retry now").click()
    await expect(page.get_by_role("status")).to_contain_text("queued to be sent again")
    await board.shot("retried")
    assert await deliver(board) == 1
    await page.goto(f"{board.base}/ui/deliveries/{did}")
    await expect(page.locator("#state")).to_have_text("delivered")
    await expect(attempts).to_have_count(3)
    await expect(attempts.last).to_contain_text("200")
    await board.shot("delivered")


async def test_disable_and_enable_a_subscriber(board: Dashboard) -> None:
    await log_in(board)
    page = board.page
    await board.goto("/ui/subscribers", "subscribers")
    row = page.locator("#sub-rx")
    await expect(row.locator(".state")).to_have_text("active")
    await page.get_by_role("button", name="Disable rx").click()
    await expect(page.get_by_role("status")).to_have_text("Subscriber rx disabled")
    await expect(row.locator(".state")).to_have_text("disabled")
    await expect(row).to_contain_text("disabled through the dashboard")
    assert board.svc.dispatcher.health("rx").disabled_at is not None
    await board.shot("disabled")
    await board.goto("/ui/", "overview-disabled")
    await expect(page.locator(".subs li.state-disabled")).to_contain_text("rx")

    await board.goto("/ui/subscribers", "subscribers-again")
    await page.get_by_role("button", name="Enable rx").click()
    await expect(row.locator(".state")).to_have_text("active")
    assert board.svc.dispatcher.health("rx").disabled_at is None
    await board.shot("enabled")

    await page.get_by_role("button", name="Send test to rx").click()
    await expect(page.get_by_role("status")).to_contain_text("ok, answered 200")
    await board.shot("tested")


async def test_search_events_and_replay(board: Dashboard) -> None:
    records = board.sim.add_records(2, status="success")
    await board.svc.poller.tick()
    assert await deliver(board) == 2
    await log_in(board)
    page = board.page
    await board.goto("/ui/events", "events")
    await expect(page.locator("#events tbody tr")).to_have_count(4)  # created, completed
    await page.get_by_label("Record id").fill(records[0]["id"])
    await page.get_by_role("button", name="Search").click()
    await expect(page.locator("#events tbody tr")).to_have_count(2)
    await expect(page.locator("#events")).not_to_contain_text(records[1]["id"])
    await board.shot("search")

    await page.get_by_label("Since (ISO 8601").fill("2000-01-01T00:00:00Z")
    await page.get_by_label("Subscriber (optional)").select_option("rx")
    await page.get_by_role("button", name="Replay").click()
    await expect(page.get_by_role("status")).to_have_text(
        re.compile(r"Replayed \d+ events: 2 deliveries queued")
    )
    await board.shot("replayed")
    await leave_live_page(board)
    assert await deliver(board) == 2
    await board.goto("/ui/events", "after-replay")
    assert len(board.rx.requests) == 4

    await page.get_by_label("Since (ISO 8601").fill("yesterday")
    await page.get_by_role("button", name="Replay").click()
    await expect(page.get_by_role("alert")).to_contain_text("not an ISO 8601 time")


async def test_pages_fit_a_phone(board: Dashboard) -> None:
    board.rx.script = [500, 500]
    board.sim.add_records(3, status="success")
    await board.svc.poller.tick()
    await deliver(board)
    await log_in(board)
    page = board.page
    await page.set_viewport_size({"width": 375, "height": 800})
    first = (await board.svc.ops.deliveries(DeliveryFilter(), limit=1))["deliveries"][0]["id"]
    for path in [*PAGES, f"/ui/deliveries/{first}"]:
        await board.goto(path, f"phone-{path}")
        width = await page.evaluate("document.body.scrollWidth")
        assert width <= 375, (path, width)


async def test_a_foreign_origin_is_refused(board: Dashboard) -> None:
    await log_in(board)
    cookies = {c["name"]: c["value"] for c in await board.page.context.cookies()}
    async with aiohttp.ClientSession(cookies=cookies) as http:
        url = board.base + "/ui/subscribers/rx/disable"
        async with http.post(url, headers={"Origin": "https://evil.example"}) as resp:
            assert resp.status == 403
            assert "cross-site" in await resp.text()
        async with http.post(url) as resp:  # neither Origin nor Referer
            assert resp.status == 403
        async with http.post(url, headers={"Referer": "https://evil.example/x"}) as resp:
            assert resp.status == 403
        assert board.svc.dispatcher.health("rx").disabled_at is None
        async with http.post(url, headers={"Origin": board.base}) as resp:
            assert resp.status == 200
        assert board.svc.dispatcher.health("rx").disabled_at is not None


@pytest.mark.parametrize("dashboard", [None], indirect=True)
async def test_without_a_token_loopback_only_and_no_login(board: Dashboard) -> None:
    await board.goto("/ui/", "tokenless-overview")
    await expect(board.page.get_by_role("button", name="Log out")).to_have_count(0)
    async with aiohttp.ClientSession() as http:
        async with http.get(board.base + "/ui/", headers={"Host": "evil.example"}) as resp:
            assert resp.status == 403
        async with http.get(board.base + "/ui/login", allow_redirects=False) as resp:
            assert resp.status == 303


async def test_deliveries_are_paged_and_filtered(
    board: Dashboard, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pages, "PAGE", 2)
    board.sim.add_records(3, status="success")
    await board.svc.poller.tick()
    assert await deliver(board) == 3
    await log_in(board)
    page = board.page
    await board.goto("/ui/deliveries", "page-1")
    rows = page.locator("#deliveries tbody tr")
    await expect(rows).to_have_count(2)
    await expect(rows.first).to_contain_text("3")
    await page.get_by_role("link", name="Older deliveries").click()
    await expect(rows).to_have_count(1)
    await expect(page.get_by_role("link", name="Older deliveries")).to_have_count(0)
    await board.shot("page-2")
    await page.get_by_label("State").select_option("failed")
    await page.get_by_role("button", name="Filter", exact=True).click()
    await expect(rows).to_have_text(["No deliveries."])
    assert "state=failed" in page.url
