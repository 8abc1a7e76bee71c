import orjson
import pytest

from relay import protocol
from relay.protocol import ErrorCode, ProtocolError

pytestmark = pytest.mark.unit


def parse(message: object, max_bytes: int = 65536) -> protocol.ClientMessage:
    return protocol.parse_message(orjson.dumps(message).decode(), max_bytes)


def test_parses_each_client_op() -> None:
    assert parse({"op": "join", "room": "a:b/c", "since": {"offset": 3, "epoch": "e"}}) == (
        protocol.Join("a:b/c", protocol.Position(3, "e"))
    )
    assert parse({"op": "leave", "room": "r", "ref": "x"}) == protocol.Leave("r", "x")
    assert parse({"op": "publish", "room": "r", "data": None, "id": "i"}) == protocol.Publish(
        "r", None, "i"
    )
    assert parse({"op": "ping", "extra": "ignored"}) == protocol.Ping()


@pytest.mark.parametrize(
    ("line", "code", "words"),
    [
        ("{", ErrorCode.BAD_REQUEST, "not JSON"),
        ("[]", ErrorCode.BAD_REQUEST, "expected a JSON object, got list"),
        ('{"op": "fly"}', ErrorCode.UNKNOWN_OP, "unknown op 'fly'"),
        ('{"op": "publish", "room": "r"}', ErrorCode.BAD_REQUEST, "needs a 'data' field"),
        ('{"op": "join", "room": "a b"}', ErrorCode.BAD_REQUEST, "bad room name"),
        (
            '{"op": "join", "room": "r", "since": {"offset": true, "epoch": "e"}}',
            ErrorCode.BAD_REQUEST,
            "since.offset",
        ),
        ('{"op": "ping", "ref": ""}', ErrorCode.BAD_REQUEST, "'ref' must be a string"),
    ],
)
def test_refusals_say_what_is_wrong(line: str, code: ErrorCode, words: str) -> None:
    with pytest.raises(ProtocolError) as refused:
        protocol.parse_message(line, 65536)
    assert refused.value.code == code
    assert words in refused.value.message


def test_refusal_carries_the_ids_of_the_message() -> None:
    with pytest.raises(ProtocolError) as refused:
        parse({"op": "publish", "room": "r", "id": "m1", "ref": "q"})
    error = orjson.loads(protocol.error(refused.value))
    assert error == {
        "op": "error",
        "code": "bad_request",
        "message": "publish needs a 'data' field",
        "ref": "q",
        "id": "m1",
        "room": "r",
    }


def test_size_limit_counts_bytes_not_characters() -> None:
    line = orjson.dumps({"op": "publish", "room": "r", "data": "é" * 40}).decode()
    assert len(line) < 90 < len(line.encode())
    with pytest.raises(ProtocolError) as refused:
        protocol.parse_message(line, 90)
    assert refused.value.code == ErrorCode.TOO_LARGE


def test_event_is_compact_single_line_json() -> None:
    payload = protocol.event("r", 7, {"text": "line\nbreak"}, 1700000000000)
    assert b"\n" not in payload
    assert orjson.loads(payload) == {
        "op": "event",
        "room": "r",
        "offset": 7,
        "data": {"text": "line\nbreak"},
        "ts": 1700000000000,
    }


def test_event_with_unencodable_data_is_a_bad_request() -> None:
    with pytest.raises(ProtocolError) as refused:
        protocol.event("r", None, 2**70, 0)
    assert refused.value.code == ErrorCode.BAD_REQUEST


def test_split_frame_ignores_blank_lines() -> None:
    assert protocol.split_frame('{"op":"ping"}\n\n {"op":"ping"}\n') == [
        '{"op":"ping"}',
        ' {"op":"ping"}',
    ]


@pytest.mark.parametrize(
    "number",
    [
        "18446744073709551616",
        "-9223372036854775809",
        "1" + "0" * 40,
        '[1, {"x": 99999999999999999999}]',
    ],
)
def test_integers_json_cannot_carry_exactly_are_refused(number: str) -> None:
    """orjson would turn them into floats: the event would carry another value than sent."""
    line = '{"op": "publish", "room": "r", "ref": "q", "data": ' + number + "}"
    with pytest.raises(ProtocolError) as refused:
        protocol.parse_message(line, 65536)
    assert refused.value.code == ErrorCode.BAD_REQUEST
    assert "outside -2**63 .. 2**64-1" in refused.value.message
    assert refused.value.ref == "q"


@pytest.mark.parametrize(
    "data", [2**64 - 1, -(2**63), "12345678901234567890123456", 1.5e300, [9223372036854775807]]
)
def test_integers_at_the_range_edges_and_long_digit_strings_pass(data: object) -> None:
    message = parse({"op": "publish", "room": "r", "data": data})
    assert isinstance(message, protocol.Publish) and message.data == data
