"""relay.broker.connection: credentials reach redis-py, never a URL or a repr."""

from pathlib import Path

import pytest
from pydantic import SecretStr

from relay.broker.connection import Connector, Credentials
from relay.config import RedisEndpoint

pytestmark = pytest.mark.unit


def test_a_password_file_is_read_again_for_every_connection(tmp_path: Path) -> None:
    path = tmp_path / "password"
    path.write_text("first\n")
    credentials = Credentials("relay", None, str(path))
    assert credentials.get_credentials() == ("relay", "first")
    path.write_text("rotated")  # Kubernetes rewrites a mounted Secret in place
    assert credentials.get_credentials() == ("relay", "rotated")
    assert "rotated" not in repr(credentials)


def test_settings_credentials_win_over_the_deprecated_ones_in_the_url() -> None:
    legacy = RedisEndpoint.parse("redis://old:from-url@a:6379/0")
    assert Connector().credentials(legacy).get_credentials() == ("old", "from-url")  # type: ignore[union-attr]
    connector = Connector(username="relay", password=SecretStr("from-env"))
    assert connector.credentials(legacy).get_credentials() == ("relay", "from-env")  # type: ignore[union-attr]
    assert Connector().credentials(RedisEndpoint.parse("redis://a:6379/0")) is None


def test_the_client_connects_to_the_clean_url_with_the_provider() -> None:
    endpoint = RedisEndpoint.parse("redis://u:s3cret@a:6379/2")
    client = Connector().client(endpoint, timeout=1, retries=0)
    kwargs = client.connection_pool.connection_kwargs
    assert kwargs["host"] == "a" and kwargs["db"] == 2
    assert "password" not in kwargs or kwargs["password"] is None
    assert "s3cret" not in repr(client) and "s3cret" not in repr(kwargs)


def test_sentinel_tls_verifies_the_sentinels_and_the_servers_they_name() -> None:
    """TLS arguments for the Sentinels and the masters (and a fenced master's direct client):
    the CA file, the hostname checked; none of it without RELAY_REDIS_SENTINEL_TLS."""
    endpoint = RedisEndpoint.parse("sentinel://gc/0")
    wanted = {"ssl_cert_reqs": "required", "ssl_check_hostname": True, "ssl_ca_certs": "/ca.pem"}
    tls = Connector(sentinels=(("s1", 26379),), ca_file="/ca.pem", sentinel_tls=True)
    (sentinel,) = tls._sentinel(1.0).sentinels
    assert wanted.items() <= sentinel.connection_pool.connection_kwargs.items()
    assert sentinel.connection_pool.connection_class.__name__ == "SSLConnection"
    master = tls.client(endpoint, timeout=1.0, retries=0)
    assert master.connection_pool.connection_class.__name__ == "SentinelManagedSSLConnection"
    assert wanted.items() <= master.connection_pool.connection_kwargs.items()
    direct = tls.direct(endpoint, ("redis-0.svc", 6379), timeout=1.0)
    assert wanted.items() <= direct.connection_pool.connection_kwargs.items()
    assert direct.connection_pool.connection_class.__name__ == "SSLConnection"
    plain = Connector(sentinels=(("s1", 26379),))
    (sentinel,) = plain._sentinel(1.0).sentinels
    assert sentinel.connection_pool.connection_class.__name__ == "Connection"
    master = plain.client(endpoint, timeout=1.0, retries=0)
    assert master.connection_pool.connection_class.__name__ == "SentinelManagedConnection"
