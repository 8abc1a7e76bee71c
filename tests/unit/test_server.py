import logging
import resource
from collections.abc import Iterator

import pytest

from relay import auth
from relay.server import FILE_RESERVE, CredentialFilter, raise_file_limit, redact

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


@pytest.fixture
def file_limit() -> Iterator[tuple[int, int]]:
    """This process's open-file limits, restored after the test."""
    limits = resource.getrlimit(resource.RLIMIT_NOFILE)
    yield limits
    resource.setrlimit(resource.RLIMIT_NOFILE, limits)


def test_the_soft_file_limit_is_raised_to_the_hard_one(
    file_limit: tuple[int, int], caplog: pytest.LogCaptureFixture
) -> None:
    _soft, hard = file_limit
    if hard == resource.RLIM_INFINITY or hard < 512:
        pytest.skip(f"needs a finite hard open-file limit of 512 or more, not {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))
    with caplog.at_level(logging.INFO, "relay.server"):
        assert raise_file_limit(hard - FILE_RESERVE) == hard
    assert resource.getrlimit(resource.RLIMIT_NOFILE) == (hard, hard)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_a_hard_file_limit_below_the_connection_limit_is_named_at_start(
    file_limit: tuple[int, int], caplog: pytest.LogCaptureFixture
) -> None:
    _soft, hard = file_limit
    if hard == resource.RLIM_INFINITY:
        pytest.skip("the hard open-file limit is unlimited: nothing to warn about")
    with caplog.at_level(logging.WARNING, "relay.server"):
        raise_file_limit(hard)  # plus the reserve: more than the process may open
    assert f"open-file limit {hard} is below RELAY_MAX_CONNECTIONS={hard}" in caplog.text
