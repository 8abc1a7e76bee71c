"""The demo page (service/relay/static/index.html) in headless Chromium, against a real relay.

The page runs the browser bundle of the TypeScript client (@gamecluster/client, built from
clients/js and served by the relay as /gamecluster-client.js, an ES module).

Playwright drives Debian's /usr/bin/chromium (`make system-deps` installs it); it never
downloads a browser of its own. Two browser contexts are two users of the page: both join a
room, one publishes, both logs show the event; then the first one's network drops, the other
publishes while it is away, and on reconnect the first page shows the missed event exactly
once (the client rejoins with `since` and the durable room replays it).
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import jwt
import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

pytestmark = [pytest.mark.browser, pytest.mark.timeout(60)]

CHROMIUM = Path("/usr/bin/chromium")
# As the machine notes say: without the background-networking flags Chromium keeps trying
# to reach hosts this closed network refuses.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
WAIT_MS = 10_000  # bound of every wait on the page; a reconnect after a drop needs < 6 s
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: `make system-deps` installs Debian's chromium")
    with sync_playwright() as playwright:
        # A plain launch gives Chromium a fresh, empty --user-data-dir of Playwright's own
        # (a temporary directory, removed on close); each context is a separate user.
        chromium = playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        yield chromium
        chromium.close()


def open_demo(browser: Browser, base_url: str) -> Page:
    page = browser.new_context(viewport={"width": 1000, "height": 760}).new_page()
    page.set_default_timeout(WAIT_MS)
    page.goto(base_url + "/")
    expect(page.locator("#state")).to_have_text("connected", timeout=WAIT_MS)
    return page


def join(page: Page, room: str) -> None:
    page.fill("#room", room)
    page.click("#join")
    expect(page.locator("#log")).to_contain_text(f"-- joined {room} at #")
    assert page.evaluate("room => window.relayClient.room(room).state", room) == "joined"


def publish(page: Page, text: str) -> None:
    page.fill("#data", json.dumps({"text": text}))
    page.click("#publish")


def log_lines(page: Page, needle: str) -> list[str]:
    """The page's event lines (`#offset room data`) that contain `needle`."""
    lines = page.locator("#log").inner_text().splitlines()
    return [line for line in lines if line.startswith("#") and needle in line]


def test_two_pages_share_a_room_and_a_dropped_page_gets_what_it_missed(
    relay_factory, browser: Browser, tmp_path: Path
) -> None:
    relay = relay_factory("web")
    room = f"chat:browser-{uuid.uuid4().hex[:8]}"
    alice, bob = open_demo(browser, relay.http), open_demo(browser, relay.http)
    # The page runs the client as an ES module; the old hand-written relay.js is gone.
    assert alice.evaluate("typeof window.relayClient.room") == "function"
    assert httpx.get(relay.http + "/relay.js", timeout=5).status_code == 404
    join(alice, room)
    join(bob, room)

    publish(bob, "hello from bob")
    for page in (alice, bob):
        expect(page.locator("#log")).to_contain_text(f'{room} {{"text":"hello from bob"}}')
    expect(bob.locator("#log")).to_contain_text("ack #")

    # Alice's network drops: her socket closes and her reconnects fail until it is back.
    alice.context.set_offline(True)
    alice.evaluate("window.relayClient.dropConnection()")
    expect(alice.locator("#state")).to_have_text("disconnected")
    publish(bob, "while alice was away")
    expect(bob.locator("#log")).to_contain_text('{"text":"while alice was away"}')
    expect(bob.locator("#log")).to_have_text(re.compile(r"ack #.*ack #", re.DOTALL))  # stored
    assert log_lines(alice, "while alice was away") == []
    assert alice.locator("#state").inner_text() != "connected"

    alice.context.set_offline(False)
    expect(alice.locator("#state")).to_have_text("connected")
    expect(alice.locator("#log")).to_contain_text('{"text":"while alice was away"}')
    # Replayed once, not again by a later live delivery: one more event proves the stream
    # has moved past it before the count is read.
    publish(bob, "after alice is back")
    expect(alice.locator("#log")).to_contain_text('{"text":"after alice is back"}')
    assert len(log_lines(alice, "while alice was away")) == 1
    assert len(log_lines(alice, "hello from bob")) == 1
    events = log_lines(alice, room)
    assert [line.split(" ", 2)[2] for line in events] == [
        '{"text":"hello from bob"}',
        '{"text":"while alice was away"}',
        '{"text":"after alice is back"}',
    ]
    assert "history lost" not in alice.locator("#log").inner_text()

    shot = tmp_path / "demo-page.png"
    alice.screenshot(path=str(shot), full_page=True)
    data = shot.read_bytes()
    assert len(data) > 1000 and data.startswith(PNG_SIGNATURE)


SECRET = "browser-test-secret-of-32-bytes-long+"


def test_the_bundle_gives_typed_errors_in_the_browser(relay_factory, browser: Browser) -> None:
    """A forbidden join rejects with the bundle's RelayError carrying the protocol's code."""
    relay = relay_factory("web", env={"RELAY_AUTH": "jwt", "RELAY_JWT_SECRET": SECRET})
    claims = {
        "sub": "alice",
        "exp": int(time.time()) + 600,
        "rooms": {"join": ["chat:*"], "publish": ["chat:*"]},
    }
    token = jwt.encode(claims, SECRET, algorithm="HS256")
    page = browser.new_context().new_page()
    page.set_default_timeout(WAIT_MS)
    page.goto(f"{relay.http}/?token={token}")
    expect(page.locator("#state")).to_have_text("connected")
    outcome = page.evaluate(
        """async () => {
            const { RelayError } = await import("/gamecluster-client.js");
            try {
                await window.relayClient.room("secret:1").join();
                return "joined";
            } catch (error) {
                return { relayError: error instanceof RelayError, code: error.code };
            }
        }"""
    )
    assert outcome == {"relayError": True, "code": "forbidden"}
    join(page, "chat:ok")  # the connection stays usable
    page.fill("#room", "secret:2")
    page.click("#join")
    expect(page.locator("#log")).to_contain_text("!! forbidden:")
