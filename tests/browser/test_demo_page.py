"""The demo game at `/` (service/relay/static/index.html + demo.js) in headless Chromium.

The page runs the browser bundle of the TypeScript client (@gamecluster/client, served by
the relay as /gamecluster-client.js): an arena whose positions travel in a volatile room
with presence, a chat in a durable room, a status bar. Its state is exposed as data on
`window.demo.snapshot()`, so these tests assert positions, members and chat lines from the
page itself, never from pixels.

Playwright drives Debian's /usr/bin/chromium (`make system-deps` installs it); it never
downloads a browser of its own. Each browser context is one player.

Screenshots of the pages go to $GAMECLUSTER_ARTIFACTS (default: the test's tmp_path, which
pytest keeps for the last three runs). GAMECLUSTER_DOCS_SCREENSHOT=1 also writes the one
shown in the README (docs/demo.png).
"""

from __future__ import annotations

import json
import os
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
import jwt
import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright
from websockets.sync.server import ServerConnection
from websockets.sync.server import serve as websockets_serve

from support.processes import LOOPBACK

pytestmark = [pytest.mark.browser, pytest.mark.timeout(120)]

REPO = Path(__file__).resolve().parents[2]
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


def makefile_demo_rooms() -> str:
    """The room policies `make run` gives the page (Makefile DEMO_ROOMS; the chart's demo
    sets the same, tests/chart/test_helm_render.py checks)."""
    for line in (REPO / "Makefile").read_text().splitlines():
        if line.startswith("DEMO_ROOMS :="):
            return line.partition(":=")[2].strip()
    raise AssertionError("Makefile has no DEMO_ROOMS")


DEMO_ROOMS = makefile_demo_rooms()
SECRET = "browser-test-secret-of-32-bytes-long+"


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


@pytest.fixture
def artifacts(tmp_path: Path) -> Path:
    where = Path(os.environ.get("GAMECLUSTER_ARTIFACTS") or tmp_path / "artifacts")
    where.mkdir(parents=True, exist_ok=True)
    return where


def rooms() -> dict[str, str]:
    """Room names of one test: the page's defaults are shared by every tab of a relay."""
    tag = uuid.uuid4().hex[:8]
    return {"arena": f"arena:{tag}", "chat": f"chat:{tag}"}


PAGE_ERRORS: dict[Page, list[str]] = {}  # uncaught errors of every page a test opened


@pytest.fixture(autouse=True)
def no_page_errors() -> Iterator[None]:
    """Every test fails on an uncaught error in one of its pages, whenever it happened."""
    PAGE_ERRORS.clear()
    yield
    errors = {page.url: errors for page, errors in PAGE_ERRORS.items() if errors}
    assert errors == {}


def open_demo(browser: Browser, base_url: str, **query: str) -> Page:
    page = browser.new_context(viewport={"width": 1200, "height": 760}).new_page()
    page.set_default_timeout(WAIT_MS)
    errors = PAGE_ERRORS.setdefault(page, [])
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(f"{base_url}/?{urlencode(query)}")
    expect(page.locator("#state")).to_have_text("connected")
    wait_for(page, "s => s.status.presence !== 'unknown'")
    return page


def snapshot(page: Page) -> dict[str, Any]:
    state: dict[str, Any] = page.evaluate("window.demo.snapshot()")
    return state


def wait_for(page: Page, predicate: str, arg: Any = None) -> None:
    """Wait until `predicate(snapshot, arg)` (a JS arrow function) holds on the page."""
    page.wait_for_function(f"arg => ({predicate})(window.demo.snapshot(), arg)", arg=arg)


def chat_texts(page: Page) -> list[str]:
    return [line["text"] for line in snapshot(page)["chat"] if line["kind"] == "message"]


def notices(page: Page) -> list[str]:
    return [line["text"] for line in snapshot(page)["chat"] if line["kind"] == "notice"]


def say(page: Page, text: str) -> None:
    """Type a chat line and send it with Enter, as a player does."""
    page.fill("#chat-input", text)
    page.press("#chat-input", "Enter")


def point_at(page: Page, x: float, y: float) -> None:
    """Press the pointer on the arena at world position (x, y) of its 800x500."""
    box = page.locator("#arena").bounding_box()
    assert box is not None
    page.mouse.click(box["x"] + box["width"] * x / 800, box["y"] + box["height"] * y / 500)


def sees_at(page: Page, player_id: str, x: float, y: float) -> None:
    """Wait until `page` has `player_id`'s last move at (x, y) and draws it there."""
    wait_for(
        page,
        "(s, [id, x, y]) => { const p = s.players[id];"
        " return p !== undefined && Math.abs(p.x - x) < 1 && Math.abs(p.y - y) < 1"
        " && Math.abs(p.drawnX - x) < 1 && Math.abs(p.drawnY - y) < 1; }",
        [player_id, x, y],
    )


def shoot(page: Page, path: Path) -> None:
    page.screenshot(path=str(path))
    data = path.read_bytes()
    assert len(data) > 1000 and data.startswith(PNG_SIGNATURE)


def test_make_run_gives_the_arena_a_volatile_room_with_presence() -> None:
    assert json.loads(DEMO_ROOMS) == [{"match": "arena:*", "policy": "volatile", "presence": True}]


def test_two_players_on_two_relays_move_chat_and_resume_after_a_sigkill(
    redis, relay_factory, browser: Browser, artifacts: Path
) -> None:
    env = {"RELAY_ROOMS": DEMO_ROOMS}
    pod_a = relay_factory("pod-a", redis_urls=[redis.url], env=env)
    pod_b = relay_factory("pod-b", redis_urls=[redis.url], env=env)
    names = rooms()
    # Each page knows both pods (a Service does this in Kubernetes), its own first.
    alice = open_demo(browser, pod_a.http, relays=f"{pod_a.url},{pod_b.url}", name="alice", **names)
    bob = open_demo(browser, pod_b.http, relays=f"{pod_b.url},{pod_a.url}", name="bob", **names)
    assert alice.locator("#node").inner_text() == "pod-a"
    assert bob.locator("#node").inner_text() == "pod-b"
    alice_id, bob_id = snapshot(alice)["me"]["id"], snapshot(bob)["me"]["id"]

    # Presence: each sees the other in the arena, with the pod the other is on.
    wait_for(alice, "s => s.members.some(m => m.name === 'bob' && m.node === 'pod-b')")
    wait_for(bob, "s => s.members.some(m => m.name === 'alice' && m.node === 'pod-a')")
    expect(bob.locator("#players")).to_contain_text("alice")

    # Movement across pods: alice points, bob sees her arrive (last move and drawn dot).
    point_at(alice, 600, 120)
    wait_for(alice, "s => Math.abs(s.me.x - 600) < 1 && Math.abs(s.me.y - 120) < 1")
    sees_at(bob, alice_id, 600, 120)
    # Bob walks right with the keyboard; alice sees him moving before he stops.
    start_x = snapshot(bob)["me"]["x"]
    bob.locator("#arena").focus()
    bob.keyboard.down("ArrowRight")
    wait_for(alice, "(s, [id, x]) => s.players[id]?.x > x + 40", [bob_id, start_x])
    # Interpolation: while he moves, alice draws him behind his last move, not on it.
    wait_for(alice, "(s, id) => s.players[id].drawnX < s.players[id].x - 1", bob_id)
    bob.keyboard.up("ArrowRight")
    bob_stop = snapshot(bob)["me"]
    sees_at(alice, bob_id, bob_stop["x"], bob_stop["y"])
    # The status bar measured a ping and the round trip of the player's own moves.
    wait_for(alice, "s => s.status.rttMs > 0 && s.status.latencyMs >= 0")
    wait_for(alice, "s => s.status.eventsPerSecond > 0")

    # Chat across pods.
    say(alice, "hello from alice")
    wait_for(bob, "(s, t) => s.chat.some(l => l.text === t)", "hello from alice")

    # Alice's pod dies; bob chats while she is away; she resumes on pod-b and has it all, once.
    pod_a.kill()
    # She noticed: away, or (on a fast reconnect, between two polls of this wait) already
    # on her second connection. Bob's messages below are then restored or live: the
    # "history restored" notice comes right before them either way.
    wait_for(
        alice,
        "s => s.status.connections >= 2"
        " || (s.status.state !== 'connected' && s.status.state !== 'resumed')",
    )
    meanwhile = [f"while alice is away {i}" for i in range(3)]
    for text in meanwhile:
        bob.evaluate("t => window.demo.sendChat(t)", text)  # resolves on the ack: stored
    expect(alice.locator("#state")).to_have_text("resumed")
    assert alice.locator("#node").inner_text() == "pod-b"
    say(bob, "after alice is back")
    for page in (alice, bob):
        wait_for(page, "(s, t) => s.chat.some(l => l.text === t)", "after alice is back")
    expected = ["hello from alice", *meanwhile, "after alice is back"]
    assert chat_texts(alice) == expected
    assert chat_texts(bob) == expected
    assert not any("history lost" in n for n in notices(alice))
    # The notice marks where the resume happened: the replayed messages follow it.
    lines = [line["text"] for line in snapshot(alice)["chat"]]
    restored = [i for i, text in enumerate(lines) if "history restored" in text]
    assert restored == [lines.index(meanwhile[0]) - 1], lines
    assert "back on pod-b" in lines[restored[0]]
    offsets = [line["offset"] for line in snapshot(alice)["chat"] if line["kind"] == "message"]
    assert offsets == list(range(offsets[0], offsets[0] + len(expected)))  # no gap

    # Her old connection on the dead pod is not listed as another player.
    wait_for(alice, "s => s.members.filter(m => m.name === 'alice').map(m => m.node) == 'pod-b'")
    # The arena works again through pod-b.
    point_at(alice, 200, 400)
    sees_at(bob, alice_id, 200, 400)

    shoot(alice, artifacts / "demo-alice.png")
    shoot(bob, artifacts / "demo-bob.png")
    if os.environ.get("GAMECLUSTER_DOCS_SCREENSHOT") == "1":
        shoot(alice, REPO / "docs" / "demo.png")  # resumed on pod-b, history restored


def test_drop_my_connection_resumes_with_what_was_missed(relay_factory, browser: Browser) -> None:
    """One relay as `make run` starts it (embedded broker, its room policies)."""
    relay = relay_factory("web", env={"RELAY_ROOMS": DEMO_ROOMS})
    names = rooms()
    alice = open_demo(browser, relay.http, name="alice", **names)
    bob = open_demo(browser, relay.http, name="bob", **names)
    # The page runs the client as an ES module; the old hand-written relay.js is gone.
    assert alice.evaluate("typeof window.demo.client.room") == "function"
    assert httpx.get(relay.http + "/relay.js", timeout=5).status_code == 404
    wait_for(alice, "s => s.presenceLog.some(l => l.startsWith('bob joined'))")

    say(bob, "hello from bob")
    wait_for(alice, "(s, t) => s.chat.some(l => l.text === t)", "hello from bob")

    # Alice's network drops: the button closes her socket, her reconnects fail until it is back.
    alice.context.set_offline(True)
    alice.click("#drop")
    expect(alice.locator("#state")).to_have_text("reconnecting")
    bob.evaluate("t => window.demo.sendChat(t)", "while alice was away")
    assert "while alice was away" not in chat_texts(alice)

    alice.context.set_offline(False)
    expect(alice.locator("#state")).to_have_text("resumed")
    # Replayed once, not again by a later live delivery: one more message proves the
    # stream has moved past it before the lines are read.
    say(bob, "after alice is back")
    wait_for(alice, "(s, t) => s.chat.some(l => l.text === t)", "after alice is back")
    assert chat_texts(alice) == ["hello from bob", "while alice was away", "after alice is back"]
    assert any("history restored" in n for n in notices(alice))
    expect(alice.locator("#chat-log")).to_contain_text("history restored")
    # Presence saw alice leave with her old connection and come back with the new one.
    wait_for(bob, "s => s.presenceLog.some(l => l.startsWith('alice left'))")
    wait_for(bob, "s => s.members.filter(m => m.name === 'alice').length === 1")


def test_history_lost_is_said_when_the_room_cannot_resume(
    redis, relay_factory, browser: Browser
) -> None:
    """The room's history is gone while the page is away (a Redis without persistence that
    restarted): the page says so instead of showing a silent gap."""
    relay = relay_factory("web", redis_urls=[redis.url], env={"RELAY_ROOMS": DEMO_ROOMS})
    names = rooms()
    alice = open_demo(browser, relay.http, name="alice", **names)
    say(alice, "before the flush")
    wait_for(alice, "(s, t) => s.chat.some(l => l.text === t)", "before the flush")
    alice.context.set_offline(True)
    alice.click("#drop")
    expect(alice.locator("#state")).to_have_text("reconnecting")
    redis.cli("FLUSHALL")
    alice.context.set_offline(False)
    expect(alice.locator("#chat-log")).to_contain_text("history lost")
    expect(alice.locator("#state")).to_have_text("connected")
    assert not any("history restored" in n for n in notices(alice))


class CrossingRelay:
    """A scripted relay (a real WebSocket server on loopback) for one demo page, whose
    `presence` reply crosses a leave, as the relay's may: it answers the page's `presence`
    op with the leave of a member first, then a reply read before that leave was stored,
    which still lists the member. Everything else gets the minimal correct answer."""

    def __init__(self) -> None:
        self.ghost = {"sub": "", "conn": "ghost-conn", "node": "fake"}
        self.server = websockets_serve(self.handle, LOOPBACK, 0)
        self.url = f"ws://{LOOPBACK}:{self.server.socket.getsockname()[1]}/ws"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def handle(self, ws: ServerConnection) -> None:
        me = {"sub": "", "conn": "s-me", "node": "fake"}

        def send(message: dict[str, Any]) -> None:
            ws.send(json.dumps(message))

        send({"op": "welcome", "session": me["conn"], "node": "fake", "heartbeat": 30})
        for frame in ws:
            for message in map(json.loads, str(frame).split("\n")):
                op, room, ref = message.get("op"), message.get("room"), message.get("ref")
                if op == "join" and room.startswith("arena:"):
                    send({"op": "joined", "room": room, "offset": None, "epoch": None, "ref": ref})
                    send({"op": "presence", "room": room, "joins": [self.ghost], "leaves": []})
                elif op == "join":
                    send({"op": "joined", "room": room, "offset": 0, "epoch": "e", "ref": ref})
                elif op == "presence":
                    send({"op": "presence", "room": room, "joins": [me], "leaves": [self.ghost]})
                    stale = [me, self.ghost]  # read before the ghost's leave was stored
                    send({"op": "members", "room": room, "count": 2, "members": stale, "ref": ref})
                elif op == "publish" and "id" in message:
                    send({"op": "ack", "id": message["id"], "room": room, "offset": None})
                elif op == "ping":
                    send({"op": "pong", **({"ref": ref} if ref else {})})

    def __enter__(self) -> CrossingRelay:
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.server.shutdown()
        self.thread.join(10)


def test_a_presence_reply_older_than_a_leave_does_not_bring_the_member_back(
    relay_factory, browser: Browser
) -> None:
    """docs/protocol.md (Presence): a `members` reply and `presence` messages are not
    ordered; a connection id is never reused, so a member whose leave the page has seen
    stays gone whatever a reply read earlier says."""
    relay = relay_factory("web", env={"RELAY_ROOMS": DEMO_ROOMS})  # serves the page only
    with CrossingRelay() as fake:
        page = open_demo(browser, relay.http, relays=fake.url, name="alice", **rooms())
        wait_for(page, "s => s.presenceLog.some(l => l.endsWith('left'))")
        assert snapshot(page)["status"]["presence"] == "on"  # the reply was handled
        assert [m["conn"] for m in snapshot(page)["members"]] == ["s-me"]
        page.context.close()  # the page's socket goes before the fake server stops


def test_without_presence_the_list_shows_who_moves(relay_factory, browser: Browser) -> None:
    """A relay whose arena rooms have no presence (RELAY_ROOMS without it): the page still
    lists the players, from their moves, and says why."""
    rooms_without_presence = json.dumps([{"match": "arena:*", "policy": "volatile"}])
    relay = relay_factory("web", env={"RELAY_ROOMS": rooms_without_presence})
    names = rooms()
    alice = open_demo(browser, relay.http, name="alice", **names)
    open_demo(browser, relay.http, name="bob", **names)
    assert snapshot(alice)["status"]["presence"] == "off"
    expect(alice.locator("#players")).to_contain_text("bob")
    expect(alice.locator("#players")).to_contain_text("alice (you)")


def token_for(sub: str, rooms: list[str], ttl: int = 600) -> str:
    claims = {
        "sub": sub,
        "exp": int(time.time()) + ttl,
        "rooms": {"join": rooms, "publish": rooms},
    }
    return jwt.encode(claims, SECRET, algorithm="HS256")


def test_an_expired_token_stops_the_page_with_its_reason(relay_factory, browser: Browser) -> None:
    """The relay refuses an expired token with 401, which a browser never shows the page
    (the handshake fails like a network error): the client reads the token's own `exp`,
    stops, and the page says the token expired, instead of reconnecting forever."""
    relay = relay_factory(
        "web", env={"RELAY_AUTH": "jwt", "RELAY_JWT_SECRET": SECRET, "RELAY_ROOMS": DEMO_ROOMS}
    )
    expired = token_for("dave", ["arena:*", "chat:*"], ttl=-60)
    page = browser.new_context().new_page()
    page.set_default_timeout(WAIT_MS)
    errors = PAGE_ERRORS.setdefault(page, [])
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(f"{relay.http}/?{urlencode({'token': expired, **rooms()})}")
    expect(page.locator("#state")).to_have_text("stopped")
    expect(page.locator("#banner")).to_contain_text("the token expired at")
    expect(page.locator("#banner")).to_contain_text("relay token --sub")


def test_with_auth_the_token_names_the_player_and_errors_are_typed(
    relay_factory, browser: Browser
) -> None:
    """Auth on (as in the chart's demo): the visitor opens /?token=...; the token's `sub`
    is the player's name; without a token the page says how to get one."""
    relay = relay_factory(
        "web", env={"RELAY_AUTH": "jwt", "RELAY_JWT_SECRET": SECRET, "RELAY_ROOMS": DEMO_ROOMS}
    )
    names = rooms()
    token = token_for("carol", ["arena:*", "chat:*"])
    page = open_demo(browser, relay.http, token=token, **names)
    assert snapshot(page)["me"]["name"] == "carol"
    wait_for(page, "s => s.members.some(m => m.sub === 'carol')")
    say(page, "signed")
    wait_for(page, "(s, t) => s.chat.some(l => l.text === t && l.from === 'carol')", "signed")
    # The name in a message is the page's to write; the relay's `from` (the token's sub) wins.
    page.evaluate("window.demo.chat.publish({ n: 'mallory', text: 'spoofed' })")
    wait_for(page, "(s, t) => s.chat.some(l => l.text === t)", "spoofed")
    assert [line["from"] for line in snapshot(page)["chat"] if line["text"] == "spoofed"] == [
        "carol"
    ]
    outcome = page.evaluate(
        """async () => {
            const { RelayError } = await import("/gamecluster-client.js");
            try {
                await window.demo.client.room("secret:1").join();
                return "joined";
            } catch (error) {
                return { relayError: error instanceof RelayError, code: error.code };
            }
        }"""
    )
    assert outcome == {"relayError": True, "code": "forbidden"}
    assert snapshot(page)["status"]["state"] == "connected"  # the connection stays usable

    anonymous = browser.new_context().new_page()
    anonymous.goto(f"{relay.http}/?{urlencode(names)}")
    # The browser hides the handshake's 401: the client keeps trying, the page says why.
    expect(anonymous.locator("#banner")).to_contain_text("relay token --sub", timeout=WAIT_MS)
    expect(anonymous.locator("#state")).to_have_text("reconnecting")
