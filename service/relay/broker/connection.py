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
from redis.exceptions import AuthenticationError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from relay.broker.base import describe
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


class SentinelFailed(RedisConnectionError):
    """One Sentinel could not be asked: still a ConnectionError, so redis-py's Sentinel goes
    on to the next one, but whose repr (what MasterNotFoundError lists for each Sentinel)
    says what happened instead of redis-py 8's bare `auth:AuthenticationError`."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason

    def __repr__(self) -> str:
        return self.reason


class SentinelClient(Redis):
    """A client of one Sentinel, named by its address in errors (redis-py's repr lists
    every connection argument), with refusals of its credentials spelled out."""

    def __repr__(self) -> str:
        kwargs = self.connection_pool.connection_kwargs
        return f"Sentinel {kwargs.get('host')}:{kwargs.get('port')}"

    async def sentinel_masters(self) -> Any:
        try:
            return await super().sentinel_masters()
        except AuthenticationError as exc:
            if self.connection_pool.connection_kwargs.get("credential_provider") is None:
                reason = "the Sentinel requires a password: set RELAY_REDIS_SENTINEL_PASSWORD"
            else:
                reason = f"{exc} (the credentials of RELAY_REDIS_SENTINEL_USERNAME/_PASSWORD)"
            raise SentinelFailed(f"{type(exc).__name__}: {reason}") from exc
        except (RedisConnectionError, RedisTimeoutError) as exc:
            raise SentinelFailed(describe(exc)) from exc


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
    sentinel_username: str | None = None
    sentinel_password: SecretStr | None = None
    sentinel_password_file: str | None = None
    """How this relay logs in to the Sentinels (RELAY_REDIS_SENTINEL_*): their own users,
    never the Redis servers' (a Sentinel's `requirepass` or its ACL users)."""
    sentinel_tls: bool = False
    """TLS to the Sentinels and to the servers they name (RELAY_REDIS_SENTINEL_TLS)."""
    _sentinel_clients: dict[float, Sentinel] = field(default_factory=dict, compare=False)

    @classmethod
    def from_settings(cls, settings: Settings) -> Connector:
        return cls(
            settings.redis_username,
            settings.redis_password,
            settings.redis_password_file,
            settings.redis_ca_file,
            settings.sentinel_addresses,
            sentinel_username=settings.redis_sentinel_username,
            sentinel_password=settings.redis_sentinel_password,
            sentinel_password_file=settings.redis_sentinel_password_file,
            sentinel_tls=settings.redis_sentinel_tls,
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
            options.update(self._sentinel_named_tls())
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
            **self._sentinel_named_tls(),
        )

    def _sentinel_named_tls(self) -> dict[str, Any]:
        """redis-py's TLS arguments for a Sentinel or a server a Sentinel named (none
        without RELAY_REDIS_SENTINEL_TLS): the chain verified against the CA file (else the
        system CAs) and the hostname checked, so a certificate must name the address the
        Sentinels give (a DNS name when they announce hostnames)."""
        if not self.sentinel_tls:
            return {}
        return {
            "ssl": True,
            "ssl_cert_reqs": "required",
            "ssl_check_hostname": True,
            "ssl_ca_certs": self.ca_file,
        }

    async def aclose(self) -> None:
        """Close the connections to the Sentinels (bounded: one socket timeout each)."""
        clients = [
            client for found in self._sentinel_clients.values() for client in found.sentinels
        ]
        self._sentinel_clients.clear()
        await asyncio.gather(*(client.aclose() for client in clients), return_exceptions=True)

    def sentinel_credentials(self) -> Credentials | None:
        """The Sentinels' user and password (a file read on every new connection), or none."""
        if self.sentinel_password is None and self.sentinel_password_file is None:
            return (
                None
                if self.sentinel_username is None
                else Credentials(self.sentinel_username, None, None)
            )
        return Credentials(
            self.sentinel_username, self.sentinel_password, self.sentinel_password_file
        )

    def _sentinel(self, timeout: float) -> Sentinel:
        found = self._sentinel_clients.get(timeout)
        if found is None:
            sockets = {"socket_timeout": timeout, "socket_connect_timeout": timeout}
            # sentinel_kwargs: how the Sentinels themselves are reached; the remaining
            # arguments are for the masters they name (with the Redis credentials).
            to_sentinels: dict[str, Any] = {**sockets, **self._sentinel_named_tls()}
            credentials = self.sentinel_credentials()
            if credentials is not None:
                to_sentinels["credential_provider"] = credentials
            found = Sentinel(  # type: ignore[no-untyped-call]  # (redis-py leaves it untyped)
                [], sentinel_kwargs=to_sentinels, **sockets
            )
            # Sentinel builds plain clients of its Sentinels; ours report failures clearly.
            found.sentinels = [
                SentinelClient(host=host, port=port, **to_sentinels)
                for host, port in self.sentinels
            ]
            self._sentinel_clients[timeout] = found
        return found
