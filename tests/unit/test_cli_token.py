"""`relay token` reads RELAY_JWT_* exactly as the relay does: what it signs, relays accept."""

from __future__ import annotations

import pytest

from relay import cli
from relay.auth import Authenticator
from relay.config import load_settings

pytestmark = pytest.mark.unit

SECRET = "unit-test-secret-of-at-least-32-bytes!"
NEXT_SECRET = "the-next-secret-also-32-bytes-long!!"


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in ("RELAY_REDIS_URLS", "RELAY_JWT_AUDIENCE", "RELAY_JWT_ISSUER"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("RELAY_AUTH", "jwt")
    return monkeypatch


def mint(capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = cli.main(["token", "--sub", "ops", "--join", "lobby", "--ttl", "5m"])
    out, err = capsys.readouterr()
    return code, out.strip(), err


def test_the_token_verifies_on_a_relay_reading_the_same_environment(
    env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # A blank entry and spaces, as a hand-edited env file has them: both parse them alike
    # (the CLI used to take the blank first entry for "not set").
    env.setenv("RELAY_JWT_SECRET", f" , {SECRET} ,{NEXT_SECRET}")
    env.setenv("RELAY_JWT_AUDIENCE", "game")
    code, token, _ = mint(capsys)
    assert code == 0
    identity = Authenticator.from_settings(load_settings()).verify(token)
    assert identity.subject == "ops" and identity.may_join("lobby")
    # Signed with the first secret: a relay that lists only it accepts the token.
    env.setenv("RELAY_JWT_SECRET", SECRET)
    assert Authenticator.from_settings(load_settings()).verify(token).subject == "ops"


@pytest.mark.parametrize(
    ("value", "words"),
    [
        ("", "RELAY_JWT_SECRET is not set"),
        (f"short,{SECRET}", "RELAY_JWT_SECRET=(not shown): secret #1 is shorter than 32 bytes"),
        (f"{SECRET},short", "secret #2 is shorter than 32 bytes"),
    ],
)
def test_a_secret_relays_would_refuse_is_refused_and_never_printed(
    env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], value: str, words: str
) -> None:
    env.setenv("RELAY_JWT_SECRET", value)
    code, out, err = mint(capsys)
    assert (code, out) == (2, "")
    assert words in err
    assert "short" not in err.replace("shorter", "") and SECRET not in err
