import pytest

from relay.broker.connection import Connector
from relay.broker.options import RedisOptions
from relay.config import ConfigError, Settings, load_settings

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


def test_a_shard_is_named_by_host_and_port_or_its_own_name_never_by_credentials(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(
        "RELAY_REDIS_URLS",
        "redis://u:s3cret@a:6380/0, rediss://b, redis://c:6379/2, main=redis://d:1/0, unix:///r.sock",
    )
    monkeypatch.setenv("RELAY_AUTH", "none")
    endpoints = load_settings().redis_endpoints
    assert [e.name for e in endpoints] == ["a:6380", "b:6379", "c:6379/2", "main", "/r.sock"]
    assert [e.url for e in endpoints] == [
        "redis://a:6380/0",
        "rediss://b:6379",
        "redis://c:6379/2",
        "redis://d:1/0",
        "unix:///r.sock",
    ]
    first = endpoints[0]
    assert first.username == "u" and first.password is not None
    assert first.password.get_secret_value() == "s3cret"
    assert "s3cret" not in repr(first)


def test_rooms_stay_on_their_shard_when_its_password_or_scheme_changes() -> None:
    from relay.broker.redis import RedisBroker

    def placement(*urls: str) -> list[str]:
        broker = RedisBroker(urls, "n", RedisOptions(timeout=1, probe_interval=1, probe_timeout=1))
        return [broker.shard_for(f"room-{n}").name for n in range(200)]

    before = placement("redis://:old@a:6379/0", "redis://b:6379/0")
    assert before == placement("rediss://:new@a:6379/0", "redis://b:6379/0")
    assert len(set(before)) == 2


@pytest.mark.parametrize(
    ("env", "words"),
    [
        ({"RELAY_REDIS_URLS": "redis://u:s3cret@a:1/0,redis://a:1/0"}, "listed twice"),
        ({"RELAY_REDIS_URLS": "x=http://u:s3cret@a"}, "not a redis://"),
        ({"RELAY_REDIS_URLS": "redis://a/0?password=s3cret"}, "RELAY_REDIS_PASSWORD"),
        (
            {"RELAY_REDIS_PASSWORD": "s3cret", "RELAY_REDIS_PASSWORD_FILE": __file__},
            "both set",
        ),
        ({"RELAY_REDIS_PASSWORD_FILE": "/no/such/file-s3cret"}, "not a readable file"),
        ({"RELAY_REDIS_CA_FILE": __file__}, "no shard in RELAY_REDIS_URLS uses rediss://"),
    ],
)
def test_redis_credential_errors_are_clear_and_never_print_the_secret(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], words: str
) -> None:
    monkeypatch.setenv("RELAY_AUTH", "none")
    monkeypatch.setenv("RELAY_REDIS_URLS", "redis://a:1/0")
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as error:
        load_settings()
    message = str(error.value)
    assert words in message
    if "RELAY_REDIS_PASSWORD_FILE" not in env or "no/such" not in env["RELAY_REDIS_PASSWORD_FILE"]:
        assert "s3cret" not in message


def test_sentinel_shards_name_a_master_and_need_the_sentinels(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("RELAY_AUTH", "none")
    monkeypatch.setenv("RELAY_REDIS_URLS", "sentinel://gc, b=sentinel://other/2")
    with pytest.raises(ConfigError, match="RELAY_REDIS_SENTINELS is empty"):
        load_settings()
    monkeypatch.setenv("RELAY_REDIS_SENTINELS", "10.0.0.1:26379, s2:26380")
    settings = load_settings()
    assert settings.sentinel_addresses == (("10.0.0.1", 26379), ("s2", 26380))
    first, second = settings.redis_endpoints
    assert (first.name, first.master, first.url) == ("gc", "gc", "sentinel://gc/0")
    assert (second.name, second.master, second.url) == ("b", "other", "sentinel://other/2")
    monkeypatch.setenv("RELAY_REDIS_SENTINELS", "no-port")
    with pytest.raises(ConfigError, match="not host:port"):
        load_settings()


def test_sentinel_tls_needs_the_sentinels_and_takes_the_ca_file(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("RELAY_AUTH", "none")
    monkeypatch.setenv("RELAY_REDIS_URLS", "rediss://a:1/0")
    monkeypatch.setenv("RELAY_REDIS_SENTINEL_TLS", "true")
    monkeypatch.setenv("RELAY_REDIS_CA_FILE", __file__)
    with pytest.raises(ConfigError, match="RELAY_REDIS_SENTINEL_TLS is set but RELAY_REDIS_SENT"):
        load_settings()
    monkeypatch.setenv("RELAY_REDIS_URLS", "sentinel://gc")
    monkeypatch.setenv("RELAY_REDIS_SENTINELS", "s1:26379")
    settings = load_settings()
    assert settings.redis_sentinel_tls and settings.redis_ca_file == __file__
    # Without it, a CA file with no rediss:// shard is still a mistake worth saying.
    monkeypatch.delenv("RELAY_REDIS_SENTINEL_TLS")
    with pytest.raises(ConfigError, match="RELAY_REDIS_SENTINEL_TLS is not set"):
        load_settings()


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


def test_sentinel_credentials_are_checked_never_shown_and_reach_the_sentinel_clients(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("RELAY_AUTH", "none")
    monkeypatch.setenv("RELAY_REDIS_URLS", "redis://a:1/0")
    monkeypatch.setenv("RELAY_REDIS_SENTINEL_PASSWORD", "s3cret-sentinel")
    with pytest.raises(ConfigError, match="RELAY_REDIS_SENTINELS is empty") as error:
        load_settings()
    assert "s3cret" not in str(error.value)
    monkeypatch.setenv("RELAY_REDIS_URLS", "sentinel://gc")
    monkeypatch.setenv("RELAY_REDIS_SENTINELS", "10.0.0.1:26379")
    monkeypatch.setenv("RELAY_REDIS_SENTINEL_PASSWORD_FILE", __file__)
    with pytest.raises(ConfigError, match="both set") as error:
        load_settings()
    assert "s3cret" not in str(error.value)
    monkeypatch.delenv("RELAY_REDIS_SENTINEL_PASSWORD_FILE")
    monkeypatch.setenv("RELAY_REDIS_SENTINEL_USERNAME", "relay-sentinel")
    monkeypatch.setenv("RELAY_REDIS_PASSWORD", "s3cret-redis")
    settings = load_settings()
    assert "s3cret" not in repr(settings)
    connector = Connector.from_settings(settings)
    sentinel = connector._sentinel(1.0)
    (client,) = sentinel.sentinels
    assert repr(client) == "Sentinel 10.0.0.1:26379"
    provider = client.connection_pool.connection_kwargs["credential_provider"]
    # The Sentinels' own user and password; the Redis password goes only to the masters.
    assert provider.get_credentials() == ("relay-sentinel", "s3cret-sentinel")
    assert sentinel.connection_kwargs.get("credential_provider") is None


def test_ack_replicas_default_off_and_its_timeout_stays_below_the_command_timeout(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("RELAY_REDIS_ACK_REPLICAS", "RELAY_REDIS_ACK_TIMEOUT", "RELAY_REDIS_TIMEOUT"):
        monkeypatch.delenv(name, raising=False)
    settings = load_settings()
    assert (settings.redis_ack_replicas, settings.redis_ack_timeout) == (0, 0.5)
    monkeypatch.setenv("RELAY_REDIS_ACK_REPLICAS", "1")
    monkeypatch.setenv("RELAY_REDIS_ACK_TIMEOUT", "2")
    with pytest.raises(ConfigError, match=r"RELAY_REDIS_ACK_TIMEOUT=2\.0 is not below"):
        load_settings()
    monkeypatch.setenv("RELAY_REDIS_TIMEOUT", "3")
    assert load_settings().redis_ack_timeout == 2.0
    monkeypatch.setenv("RELAY_REDIS_ACK_REPLICAS", "-1")
    with pytest.raises(ConfigError, match="RELAY_REDIS_ACK_REPLICAS='-1'"):
        load_settings()


def test_redis_options_default_to_the_settings_defaults_and_are_read_from_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A test or benchmark that builds a broker with RedisOptions() gets what a relay with
    none of these variables set gets; from_settings carries every one of them."""
    read_from = ("redis_timeout", "probe_interval", "probe_timeout", "dedupe_seconds")
    read_from += ("redis_ack_replicas", "redis_ack_timeout")
    defaults = RedisOptions()
    assert (
        defaults.timeout,
        defaults.probe_interval,
        defaults.probe_timeout,
        defaults.dedupe_seconds,
        defaults.ack_replicas,
        defaults.ack_timeout,
    ) == tuple(Settings.model_fields[name].default for name in read_from)
    for name, value in {
        "RELAY_AUTH": "none",
        "RELAY_REDIS_URLS": "redis://a:1/0",
        "RELAY_REDIS_USERNAME": "relay",
        "RELAY_REDIS_TIMEOUT": "3",
        "RELAY_PROBE_INTERVAL": "4",
        "RELAY_PROBE_TIMEOUT": "5",
        "RELAY_DEDUPE_SECONDS": "6",
        "RELAY_REDIS_ACK_REPLICAS": "1",
        "RELAY_REDIS_ACK_TIMEOUT": "2",
    }.items():
        monkeypatch.setenv(name, value)
    settings = load_settings()

    def counted() -> None:
        """Stands for the relay's reconnect counter (compared by identity)."""

    options = RedisOptions.from_settings(settings, on_reconnect=counted)
    assert options == RedisOptions(
        Connector.from_settings(settings),
        timeout=3.0,
        probe_interval=4.0,
        probe_timeout=5.0,
        dedupe_seconds=6,
        ack_replicas=1,
        ack_timeout=2.0,
        on_reconnect=counted,
    )
    assert options.connector.username == "relay"
