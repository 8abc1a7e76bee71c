"""redis-py clients built from the settings: credentials, TLS and timeouts in one place.

Credentials never travel inside a URL here: every `RedisEndpoint.url` is clean (safe to log)
and the user and password reach redis-py through a credential provider. A password file is
read again for every new connection, so a Kubernetes Secret mounted as a file can be rotated
without restarting the relay (Kubernetes rewrites the file in place; the next reconnect
uses the new value). A password that Redis refuses fails the connection with redis-py's
AuthenticationError, which the shard logs with its clean URL and retries with backoff.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import SecretStr
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.credentials import CredentialProvider

from relay.config import RedisEndpoint, Settings


class Credentials(CredentialProvider):
    """A user and a password, or a user and a file to read the password from each time."""

    def __init__(
        self, username: str | None, password: SecretStr | None, password_file: str | None
    ) -> None:
        self._username = username
        self._password = password
        self._password_file = password_file

    def get_credentials(self) -> tuple[str] | tuple[str, str]:
        if self._password_file is not None:
            password = Path(self._password_file).read_text().strip()
        elif self._password is not None:
            password = self._password.get_secret_value()
        else:
            password = ""
        if self._username is None:
            return (password,)
        return (self._username, password)

    async def get_credentials_async(self) -> tuple[str] | tuple[str, str]:
        return self.get_credentials()

    def __repr__(self) -> str:  # never the password, whoever prints this object
        return f"Credentials(username={self._username!r})"


@dataclass(frozen=True)
class Connector:
    """How this relay connects to Redis: who it is (ACL user) and what it trusts (TLS CA)."""

    username: str | None = None
    password: SecretStr | None = None
    password_file: str | None = None
    ca_file: str | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> Connector:
        return cls(
            settings.redis_username,
            settings.redis_password,
            settings.redis_password_file,
            settings.redis_ca_file,
        )

    def credentials(self, endpoint: RedisEndpoint) -> Credentials | None:
        """The settings' credentials; else the (deprecated) ones inside the URL; else none."""
        if self.password is not None or self.password_file is not None:
            return Credentials(self.username, self.password, self.password_file)
        if endpoint.password is not None:
            return Credentials(self.username or endpoint.username, endpoint.password, None)
        if self.username is not None or endpoint.username is not None:
            return Credentials(self.username or endpoint.username, None, None)
        return None

    def client(self, endpoint: RedisEndpoint, *, timeout: float, retries: int) -> Redis:
        """A client of one shard; `retries` quick retries of a command on a dropped connection."""
        options: dict[str, Any] = {
            "socket_timeout": timeout,
            "socket_connect_timeout": timeout,
            "retry": Retry(NoBackoff(), retries),
        }
        credentials = self.credentials(endpoint)
        if credentials is not None:
            options["credential_provider"] = credentials
        if endpoint.url.startswith("rediss://") and self.ca_file is not None:
            options["ssl_ca_certs"] = self.ca_file
        return Redis.from_url(endpoint.url, **options)
