"""Control messages between relay servers (relay.control): one builder, one parser."""

from __future__ import annotations

import pytest

from relay import control

pytestmark = pytest.mark.unit


def test_each_command_survives_the_round_trip() -> None:
    assert control.parse(control.disconnect("a", "p7", "cheating")) == control.Command(
        "disconnect", "a", subject="p7", reason="cheating"
    )
    assert control.parse(control.leave("b", "p7", "match:1")) == control.Command(
        "leave", "b", subject="p7", room="match:1"
    )
    member = {"sub": "p1", "conn": "c1", "node": "a"}
    parsed = control.parse(control.presence("a", "lobby", [member], []))
    assert (parsed.op, parsed.room, parsed.joins, parsed.leaves) == (
        "presence",
        "lobby",
        [member],
        [],
    )


@pytest.mark.parametrize(
    "raw",
    [
        b"not json",
        b"[]",
        b'{"v": 2, "op": "disconnect", "node": "a"}',
        b'{"v": 1, "op": "explode", "node": "a"}',
        b'{"v": 1, "op": "disconnect"}',
        b'{"v": 1, "op": "leave", "node": "a", "sub": 7}',
        b'{"v": 1, "op": "presence", "node": "a", "joins": {}}',
    ],
)
def test_anything_else_is_a_control_error(raw: bytes) -> None:
    with pytest.raises(control.ControlError):
        control.parse(raw)
