"""The dashboard's deliveries filters, retry-all, record search, live updates and its event
stream, in a real Chromium. These check the translation from page to `ops` and back (the
operations themselves are tested at the application layer)."""

from __future__ import annotations

from datetime import UTC, datetime

import aiohttp
import pytest
from playwright.async_api import expect

from bridge.models import DeliveryFilter, DeliveryState
from bridge.ui import pages
from tests.browser.conftest import Dashboard
from tests.browser.test_dashboard import deliver, log_in


def local(ts: float) -> str:
    """A time as a `datetime-local` input takes it (UTC, as the page says)."""
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S")


async def two_kinds_failed(board: Dashboard) -> tuple[str, str]:
    """One `denoise.completed` and one `denoise.failed` delivery, both dead letters; the
    record ids of each."""
    board.rx.script = [500] * 4
    done = board.sim.add_records(1, status="success")[0]["id"]
    failed = board.sim.add_records(1, status="failed")[0]["id"]
    await board.svc.poller.tick()
    for _ in range(5):
        await deliver(board)
        await board.clock.advance(2)
    dead = await board.svc.ops.deliveries(DeliveryFilter(state=DeliveryState.FAILED))
    assert len(dead["deliveries"]) == 2
    return done, failed


async def test_filters_by_event_type_record_and_time_range(board: Dashboard) -> None:
    first = board.sim.add_records(1, status="success")[0]["id"]
    await board.svc.poller.tick()
    queued_first = board.clock.now()
    await board.clock.advance(3600)
    later = board.sim.add_records(1, status="failed")[0]["id"]
    await board.svc.poller.tick()
    await log_in(board)
    page = board.page
    rows = page.locator("#deliveries tbody tr")
    await board.goto("/ui/deliveries", "all")
    await expect(rows).to_have_count(2)

    await page.get_by_label("Event type").select_option("denoise.failed")
    await page.get_by_role("button", name="Filter", exact=True).click()
    await expect(rows).to_have_count(1)
    await expect(rows.locator(".record")).to_have_text([later])
    assert "type=denoise.failed" in page.url  # shareable
    await board.shot("by-type")

    await board.goto("/ui/deliveries", "all-again")
    await page.get_by_label("Record id").fill(first)
    await page.get_by_role("button", name="Filter", exact=True).click()
    await expect(rows.locator(".record")).to_have_text([first])
    assert f"record={first}" in page.url
    await board.shot("by-record")

    await board.goto("/ui/deliveries", "all-3")
    await page.get_by_label("Queued since (UTC)").fill(local(queued_first + 1800))
    await page.get_by_role("button", name="Filter", exact=True).click()
    await expect(rows.locator(".record")).to_have_text([later])
    assert "since=" in page.url
    await board.shot("since")
    await page.get_by_label("Queued since (UTC)").fill("")
    await page.get_by_label("Queued until (UTC)").fill(local(queued_first + 1800))
    await page.get_by_role("button", name="Filter", exact=True).click()
    await expect(rows.locator(".record")).to_have_text([first])
    await board.shot("until")

    # the URL alone gives the same list; a time that is not one says so
    since, until = local(queued_first - 60), local(queued_first + 1800)
    await board.goto(f"/ui/deliveries?since={since}&until={until}", "from-url")
    await expect(rows.locator(".record")).to_have_text([first])
    await expect(page.get_by_label("Queued since (UTC)")).to_have_value(since)
    response = await page.goto(f"{board.base}/ui/deliveries?since=yesterday")
    assert response is not None and response.status == 400
    await expect(page.get_by_role("alert")).to_contain_text("since")
    await expect(page.get_by_label("Queued since (UTC)")).to_have_value("")
    await board.shot("bad-time")


async def test_paging_keeps_the_filter(board: Dashboard, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pages, "PAGE", 2)
    board.sim.add_records(3, status="success")
    board.sim.add_records(1, status="failed")
    await board.svc.poller.tick()
    await log_in(board)
    page = board.page
    await board.goto("/ui/deliveries?type=denoise.completed", "page-1")
    rows = page.locator("#deliveries tbody tr")
    await expect(rows).to_contain_text(["denoise.completed"] * 2)
    await page.get_by_role("link", name="Older deliveries").click()
    await expect(rows).to_contain_text(["denoise.completed"])
    assert "type=denoise.completed" in page.url and "before=" in page.url
    await expect(page.get_by_label("Event type")).to_have_value("denoise.completed")
    await expect(page.get_by_role("link", name="Older deliveries")).to_have_count(0)
    await board.shot("page-2")


async def test_retry_all_failed_retries_only_those_matching_the_filter(board: Dashboard) -> None:
    done, failed = await two_kinds_failed(board)
    await log_in(board)
    page = board.page
    rows = page.locator("#deliveries tbody tr")
    await board.goto("/ui/deliveries?state=failed", "dead-letters")
    await expect(rows).to_have_count(2)

    await board.goto("/ui/deliveries?type=denoise.failed", "filtered")
    await page.get_by_role("button", name="Retry all failed matching this filter").click()
    await expect(page.get_by_role("status")).to_have_text(
        "1 failed delivery matching this filter queued to be sent again"
    )
    assert "type=denoise.failed" in page.url  # back on the same filter
    await expect(rows.locator(".record")).to_have_text([failed])
    await expect(rows.locator(".state")).to_have_text(["pending"])
    await board.shot("retried")

    await board.goto("/ui/deliveries?state=failed", "still-failed")
    await expect(rows.locator(".record")).to_have_text([done])
    await board.goto("/ui/deliveries?state=pending", "now-pending")
    await expect(rows.locator(".record")).to_have_text([failed])

    # not offered where it cannot apply
    await board.goto("/ui/deliveries?state=delivered", "delivered")
    await expect(page.get_by_role("button", name="Retry all failed")).to_have_count(0)


async def test_record_search_finds_an_event_older_than_the_latest_page(
    board: Dashboard, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pages, "PAGE", 2)
    oldest, *_ = board.sim.add_records(3, status="success")
    await board.svc.poller.tick()
    await log_in(board)
    page = board.page
    rows = page.locator("#events tbody tr")
    await board.goto("/ui/events", "latest-page")
    await expect(rows).to_have_count(2)
    await expect(page.locator("#events")).not_to_contain_text(oldest["id"])
    await page.get_by_label("Record id").fill(oldest["id"])
    await page.get_by_role("button", name="Search").click()
    await expect(rows).to_have_count(2)  # its created and completed
    for i in range(2):
        await expect(rows.nth(i)).to_contain_text(oldest["id"])
    assert f"record={oldest['id']}" in page.url
    await board.shot("found")


async def test_the_overview_lists_the_bridges_reports(board: Dashboard) -> None:
    await two_kinds_failed(board)
    await log_in(board)
    reports = board.page.locator("#reports li")
    await expect(reports).to_have_count(2)
    await expect(reports.first).to_contain_text("failed for good after 2 attempts")
    await expect(reports.first).to_contain_text("bridge.delivery_dead_lettered")
    await board.shot("reports")
    await board.page.get_by_role("link", name="All dead-letter reports").click()
    await expect(board.page.locator("#events tbody tr")).to_have_count(2)


async def test_a_new_event_shows_up_without_reloading(board: Dashboard) -> None:
    await log_in(board)
    page = board.page
    await board.goto("/ui/deliveries", "before")
    await expect(page.locator("#deliveries tbody tr")).to_have_text(["No deliveries."])
    await page.get_by_label("Record id").fill("typed, not lost")
    await page.evaluate("window.notReloaded = true")
    await page.get_by_label("Record id").blur()

    record = board.sim.add_records(1, status="success")[0]["id"]
    await board.svc.poller.tick()  # stores its events: the stream tells the page
    await expect(page.locator("#deliveries")).to_contain_text(record)
    assert await page.evaluate("window.notReloaded === true")
    await expect(page.get_by_label("Record id")).to_have_value("typed, not lost")
    await board.shot("updated")

    # while the operator is typing in a form, the page says so instead of changing
    await page.get_by_label("Record id").focus()
    other = board.sim.add_records(1, status="success")[0]["id"]
    await board.svc.poller.tick()
    note = page.locator("#live-note")
    await expect(note).to_be_visible()
    await expect(note).to_contain_text("new event")
    await expect(page.locator("#deliveries")).not_to_contain_text(other)
    await board.shot("waiting")
    await page.get_by_role("button", name="Show them").click()
    await expect(page.locator("#deliveries")).to_contain_text(other)
    await expect(note).to_be_hidden()
    assert await page.evaluate("window.notReloaded === true")


async def test_the_overview_updates_itself(board: Dashboard) -> None:
    await log_in(board)
    page = board.page
    await expect(page.locator("#outbox tbody td").first).to_have_text("0")  # pending
    link = page.locator("#live").get_by_role("link", name="rx", exact=True)
    await link.focus()  # the keyboard's place is kept across the update
    board.sim.add_records(2, status="success")
    await board.svc.poller.tick()
    await expect(page.locator("#outbox tbody td").first).to_have_text("2")
    await expect(link).to_be_focused()
    await board.shot("overview-updated")


async def test_without_javascript_the_pages_still_work(board: Dashboard) -> None:
    board.sim.add_records(1, status="success")
    board.sim.add_records(1, status="failed")
    await board.svc.poller.tick()
    browser = board.page.context.browser
    assert browser is not None
    context = await browser.new_context(java_script_enabled=False)
    with_js = board.page
    try:
        board.page = await context.new_page()
        await log_in(board)
        await board.goto("/ui/deliveries", "no-js")
        page = board.page
        await expect(page.locator("#live-note")).to_be_hidden()
        await page.get_by_label("Event type").select_option("denoise.failed")
        await page.get_by_role("button", name="Filter", exact=True).click()
        await expect(page.locator("#deliveries tbody tr")).to_have_count(1)
        assert "type=denoise.failed" in page.url
        await board.shot("no-js-filtered")
    finally:
        board.page = with_js
        await context.close()


async def test_the_stream_needs_a_session_and_our_origin(board: Dashboard) -> None:
    url = board.base + "/ui/stream"
    async with aiohttp.ClientSession() as http, http.get(url, allow_redirects=False) as resp:
        assert resp.status == 401
    await log_in(board)
    cookies = {c["name"]: c["value"] for c in await board.page.context.cookies()}
    async with aiohttp.ClientSession(cookies=cookies) as http:
        async with http.get(url, headers={"Origin": "https://evil.example"}) as resp:
            assert resp.status == 403
        async with http.get(url, headers={"Origin": board.base}) as resp:
            assert resp.status == 200
            assert resp.headers["Content-Type"].startswith("text/event-stream")
            assert "frame-ancestors 'none'" in resp.headers["Content-Security-Policy"]
            assert resp.headers["X-Frame-Options"] == "DENY"
