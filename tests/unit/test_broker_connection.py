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
