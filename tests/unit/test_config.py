import pytest

from relay.config import ConfigError, load_settings

pytestmark = pytest.mark.unit


def test_defaults_are_the_documented_ones(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("RELAY_PORT", "RELAY_REDIS_URLS", "RELAY_SEND_QUEUE"):
        monkeypatch.delenv(name, raising=False)
    settings = load_settings()
    assert settings.port == 8080
    assert settings.redis_urls == ()
    assert settings.max_message_bytes == 65536
    assert settings.send_queue == 1000
    assert settings.compression is False


def test_redis_urls_are_comma_separated(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RELAY_REDIS_URLS", "redis://a:6379/0, redis://b:6379/0")
    monkeypatch.setenv("RELAY_AUTH", "none")  # Redis without RELAY_AUTH refuses to start
    assert load_settings().redis_urls == ("redis://a:6379/0", "redis://b:6379/0")


@pytest.mark.parametrize(
    ("name", "value", "words"),
    [
        ("RELAY_PORT", "eighty", "RELAY_PORT='eighty'"),
        ("RELAY_PORT", "70000", "less than or equal to 65535"),
        ("RELAY_REDIS_URLS", "http://x", "not a redis://"),
        ("RELAY_SEND_QUEUE", "0", "RELAY_SEND_QUEUE='0'"),
    ],
)
def test_bad_values_name_the_variable(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, words: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as bad:
        load_settings()
    assert words in str(bad.value)
    assert "\n" not in str(bad.value)


def test_admin_port_and_api_keys_are_checked_and_keys_never_shown(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("RELAY_PORT", "9000")
    monkeypatch.setenv("RELAY_ADMIN_PORT", "9000")
    with pytest.raises(ConfigError, match="RELAY_ADMIN_PORT=9000 is RELAY_PORT"):
        load_settings()
    monkeypatch.setenv("RELAY_ADMIN_PORT", "0")
    monkeypatch.setenv("RELAY_API_KEYS", "short-secret-key, " + "k" * 40)
    with pytest.raises(ConfigError) as exc:
        load_settings()
    assert "RELAY_API_KEYS=(not shown)" in str(exc.value) and "short-secret-key" not in str(
        exc.value
    )
    monkeypatch.setenv("RELAY_API_KEYS", "k" * 40 + "," + "j" * 40)
    settings = load_settings()
    assert (settings.admin_port, len(settings.api_keys)) == (0, 2)
