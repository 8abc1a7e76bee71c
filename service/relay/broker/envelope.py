"""The versioned envelope an event travels in between relay servers (through Redis).

Layout: one compact JSON header line, `\\n`, then the client `event` message exactly as
members receive it. Receiving servers parse only the small header and pass the event
bytes on untouched, so an event is JSON-encoded once, on the publishing server.
JSON only, never pickle: a Redis channel is not a trusted source of code.
"""

from __future__ import annotations

from typing import Any, Final

import orjson

from relay.broker.base import Delivery

VERSION: Final = 1


class EnvelopeError(ValueError):
    """Bytes on a room channel that are not an envelope this version understands."""


def pack(origin: str, room: str, ts: int, payload: bytes, trace: dict[str, str] | None) -> bytes:
    """The envelope of an event without an offset (a volatile room's): the only kind a
    relay packs in Python; a durable event's header gets its offset in the Redis script
    (header_parts). Fields, not a Delivery: one publish builds no Delivery to pack."""
    header: dict[str, Any] = {"v": VERSION, "node": origin, "room": room, "ts": ts}
    if trace:
        header["tc"] = trace
    return b"%b\n%b" % (orjson.dumps(header), payload)


def header_parts(
    origin: str, room: str, ts: int, trace: dict[str, str] | None
) -> tuple[bytes, bytes]:
    """A header split where a script inserts `<offset>,"epoch":"<epoch>"` (durable publish)."""
    head = orjson.dumps({"v": VERSION, "node": origin, "room": room, "ts": ts})[:-1] + b',"offset":'
    tail = b',"tc":' + orjson.dumps(trace) + b"}" if trace else b"}"
    return head, tail


def unpack(message: bytes) -> Delivery:
    head, sep, payload = message.partition(b"\n")
    if not sep or not payload:
        raise EnvelopeError("no event after the header line")
    try:
        header = orjson.loads(head)
    except orjson.JSONDecodeError as exc:
        raise EnvelopeError(f"header is not JSON: {exc}") from exc
    if not isinstance(header, dict) or header.get("v") != VERSION:
        raise EnvelopeError(f"unsupported envelope version {header!r:.80}")
    try:
        room, ts, origin = header["room"], header["ts"], header["node"]
    except KeyError as exc:
        raise EnvelopeError(f"header lacks {exc}") from exc
    offset, epoch, trace = header.get("offset"), header.get("epoch"), header.get("tc")
    if not (
        isinstance(room, str)
        and isinstance(origin, str)
        and isinstance(ts, int)
        and (offset is None or (isinstance(offset, int) and isinstance(epoch, str)))
        and (trace is None or isinstance(trace, dict))
    ):
        raise EnvelopeError(f"header fields of the wrong type: {header!r:.120}")
    return Delivery(room, payload, ts, offset, epoch, origin, trace)
