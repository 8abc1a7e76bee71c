import logging

import pytest

from relay import auth
from relay.server import CredentialFilter, redact

pytestmark = pytest.mark.unit

TOKEN = auth.mint("unit-secret-that-is-at-least-32-bytes", subject="a", ttl=60)


@pytest.mark.parametrize(
    "line",
    [
        f'127.0.0.1:5 - "WebSocket /ws?token={TOKEN}" [accepted]',
        f"< GET /ws?token={TOKEN} HTTP/1.1",
        f"< Authorization: Bearer {TOKEN}",
        f"invalid token {TOKEN}",
        f"callback?token={TOKEN[:20]}&x=1",
    ],
)
def test_no_piece_of_a_token_survives(line: str) -> None:
    cleaned = redact(line)
    assert not any(part in cleaned for part in TOKEN.split(".")), cleaned
    assert not any(part[:8] in cleaned for part in TOKEN.split(".")), cleaned


def test_a_redis_password_is_removed_and_plain_text_kept() -> None:
    assert redact("broker: redis rediss://user:hunter2@redis:6380/0") == (
        "broker: redis rediss://[redacted]@redis:6380/0"
    )
    assert redact("room r: offset 5 arrived after 3? reading") == (
        "room r: offset 5 arrived after 3? reading"
    )


def test_the_filter_rewrites_message_and_arguments() -> None:
    record = logging.LogRecord(
        "uvicorn.error", logging.INFO, __file__, 1, '%s - "WebSocket %s" [accepted]',
        ("127.0.0.1:5", f"/ws?token={TOKEN}"), None,
    )  # fmt: skip
    assert CredentialFilter().filter(record)
    assert record.getMessage() == '127.0.0.1:5 - "WebSocket /ws?[query redacted]" [accepted]'
