"""redis-py clients built from the settings: credentials, TLS and timeouts in one place.

Credentials never travel inside a URL here: every `RedisEndpoint.url` is clean (safe to log)
and the user and password reach redis-py through a credential provider. A password file is
read again for every new connection, so a Kubernetes Secret mounted as a file can be rotated
without restarting the relay (Kubernetes rewrites the file in place; the next reconnect
uses the new value). A password that Redis refuses fails the connection with redis-py's
AuthenticationError, which the shard logs with its clean URL and retries with backoff.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import SecretStr
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool
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


MasterCheck = Callable[[tuple[str, int]], None]
"""Called with the master's address before each new connection; raises to refuse it."""


class FencedPool(SentinelConnectionPool):
    """A Sentinel pool that lets its owner refuse a new master until it is ready for it
    (the shard starts new epochs after a failover before anything reads or writes there)."""

    def __init__(self, service_name: str, sentinel_manager: Sentinel, **kwargs: Any) -> None:
        self._check: MasterCheck = kwargs.pop("check_master")
        super().__init__(service_name, sentinel_manager, **kwargs)  # type: ignore[no-untyped-call]

    async def get_master_address(self) -> tuple[str, int]:
        host, port = await super().get_master_address()  # type: ignore[no-untyped-call]
        address = (str(host), int(port))
        self._check(address)
        return address


@dataclass(frozen=True)
class Connector:
    """How this relay connects to Redis: who it is (ACL user) and what it trusts (TLS CA)."""

    username: str | None = None
    password: SecretStr | None = None
    password_file: str | None = None
    ca_file: str | None = None
    sentinels: tuple[tuple[str, int], ...] = ()
    """Where `sentinel://<master>` shards find their master (RELAY_REDIS_SENTINELS)."""
    _sentinel_clients: dict[float, Sentinel] = field(default_factory=dict, compare=False)

    @classmethod
    def from_settings(cls, settings: Settings) -> Connector:
        return cls(
            settings.redis_username,
            settings.redis_password,
            settings.redis_password_file,
            settings.redis_ca_file,
            settings.sentinel_addresses,
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

    def client(
        self,
        endpoint: RedisEndpoint,
        *,
        timeout: float,
        retries: int,
        check_master: MasterCheck | None = None,
    ) -> Redis:
        """A client of one shard; `retries` quick retries of a command on a dropped connection.

        Sentinel shards: `check_master` sees the master's address before every connection."""
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
        if endpoint.master is not None:
            # Every new connection asks the Sentinels for the master and checks its role,
            # so a client follows a failover on its next reconnect.
            db = int(endpoint.url.rpartition("/")[2])
            sentinel = self._sentinel(timeout)
            if check_master is not None:
                options["connection_pool_class"] = FencedPool
                options["check_master"] = check_master
            client: Redis = sentinel.master_for(
                endpoint.master, redis_class=Redis, db=db, **options
            )
            return client
        return Redis.from_url(endpoint.url, **options)

    async def master_address(
        self, endpoint: RedisEndpoint, *, timeout: float
    ) -> tuple[str, int] | None:
        """The address the Sentinels give for the shard's master; None without Sentinel."""
        if endpoint.master is None:
            return None
        host, port = await self._sentinel(timeout).discover_master(endpoint.master)
        return str(host), int(port)

    def direct(self, endpoint: RedisEndpoint, address: tuple[str, int], *, timeout: float) -> Redis:
        """A client of one server of a Sentinel shard, by address (no Sentinel, no check)."""
        return Redis(
            host=address[0],
            port=address[1],
            db=int(endpoint.url.rpartition("/")[2]),
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            credential_provider=self.credentials(endpoint),
        )

    async def aclose(self) -> None:
        """Close the connections to the Sentinels (bounded: one socket timeout each)."""
        clients = [
            client for found in self._sentinel_clients.values() for client in found.sentinels
        ]
        self._sentinel_clients.clear()
        await asyncio.gather(*(client.aclose() for client in clients), return_exceptions=True)

    def _sentinel(self, timeout: float) -> Sentinel:
        found = self._sentinel_clients.get(timeout)
        if found is None:
            found = Sentinel(  # type: ignore[no-untyped-call]  # (redis-py leaves it untyped)
                list(self.sentinels), socket_timeout=timeout, socket_connect_timeout=timeout
            )
            self._sentinel_clients[timeout] = found
        return found
