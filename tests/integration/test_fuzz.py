"""Random frames never crash the relay (issue: relay core, test 6, property-based)."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from relay.protocol import CloseCode
from support.processes import RelayProcess

pytestmark = pytest.mark.integration

SERVER_OPS = {"welcome", "joined", "left", "event", "ack", "pong", "error", "reconnect"}
PROTOCOL_CLOSE_CODES = {int(code) for code in CloseCode}
"""Every code docs/protocol.md lists; a new one joins the enum, and with it this set."""

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
messages = st.fixed_dictionaries(
    {"op": st.sampled_from(["join", "leave", "publish", "ping", "nope"]) | st.text(max_size=6)},
    optional={
        "room": st.sampled_from(["r", "a:b/c", "bad room", ""]) | st.text(max_size=10),
        "data": json_values,
        "id": st.text(max_size=70) | st.integers(),
        "ref": st.text(max_size=70) | st.integers(),
        "since": st.fixed_dictionaries({"offset": json_values, "epoch": json_values}) | json_values,
    },
)
frames = (
    st.lists(messages, min_size=1, max_size=3).map(
        # stdlib json, not orjson: it also writes integers past 64 bits, which must be refused
        lambda ms: "\n".join(json.dumps(m, separators=(",", ":")) for m in ms)
    )
    | st.text(max_size=200)
    | st.binary(max_size=64)
)


class Connection:
    """One connection reused across examples, reopened after the server closed it."""

    def __init__(self, relay: RelayProcess) -> None:
        self.relay = relay
        self.ws: ClientConnection | None = None
        self._stack = contextlib.ExitStack()

    def get(self) -> ClientConnection:
        if self.ws is None:
            self.ws = self._stack.enter_context(
                connect(self.relay.url, max_size=None, open_timeout=5)
            )
            assert orjson.loads(self.ws.recv(timeout=5))["op"] == "welcome"
        return self.ws

    def close(self) -> None:
        self._stack.close()


@pytest.fixture(scope="module")
def fuzz_relay(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RelayProcess]:
    env = {
        "RELAY_MAX_MESSAGE_BYTES": "512",
        "RELAY_PUBLISH_RATE": "1000",
        "RELAY_PUBLISH_BURST": "1000",
    }
    relay = RelayProcess(tmp_path_factory.mktemp("fuzz"), {"RELAY_AUTH": "none", **env}, "fuzz")
    relay.start()
    yield relay
    relay.kill()


@pytest.fixture(scope="module")
def connection(fuzz_relay: RelayProcess) -> Iterator[Connection]:
    conn = Connection(fuzz_relay)
    yield conn
    conn.close()


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(frame=frames)
def test_every_frame_gets_valid_replies_or_a_protocol_close(
    connection: Connection, frame: str | bytes
) -> None:
    ws = connection.get()
    try:
        ws.send(frame)
        ws.send('{"op": "ping", "ref": "fuzz-probe"}')
        replies = read_until_probe(ws)
    except ConnectionClosed as exc:
        connection.ws = None
        closed = exc
    else:
        for reply in replies:
            assert isinstance(reply, dict) and reply.get("op") in SERVER_OPS, reply
            assert reply.get("code") != "internal", reply
        return
    assert closed.rcvd is not None and closed.rcvd.code in PROTOCOL_CLOSE_CODES, closed


def read_until_probe(ws: ClientConnection) -> list[object]:
    replies: list[object] = []
    while True:
        for line in str(ws.recv(timeout=5)).split("\n"):
            reply = orjson.loads(line)
            replies.append(reply)
            if reply == {"op": "pong", "ref": "fuzz-probe"}:
                return replies


def test_server_survives_the_fuzzing(fuzz_relay: RelayProcess) -> None:
    assert fuzz_relay.status("/healthz") == 200
    with connect(fuzz_relay.url) as ws:
        assert orjson.loads(ws.recv(timeout=5))["op"] == "welcome"
        ws.send('{"op": "ping", "ref": "x"}')
        assert orjson.loads(ws.recv(timeout=5)) == {"op": "pong", "ref": "x"}
