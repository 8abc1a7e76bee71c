"""Relay settings, read from `RELAY_*` environment variables and validated at start.

Environment-only on purpose: Helm values and the operator's pod env map onto these
fields one to one. A bad value stops the process with one line that names the
variable, the value and what was expected (see `load_settings`).
"""

from __future__ import annotations

import re
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal, TypeVar
from urllib.parse import parse_qs, unquote, urlsplit

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from pydantic import (
    AfterValidator,
    BeforeValidator,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from relay.rooms import RoomPolicy

PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey
MIN_SECRET_BYTES = 32
"""RFC 7518 3.2: an HS256 key must be at least as long as the hash (256 bits)."""
MIN_RSA_BITS = 2048
_PEM_BLOCK = re.compile(r"-----BEGIN ([A-Z ]+)-----.+?-----END \1-----", re.DOTALL)
_UNSHOWN = {
    "jwt_secret",
    "jwt_public_key",
    "api_keys",
    "redis_password",
    "redis_sentinel_password",
}
"""Settings whose value a config error must not print (a secret; a long PEM)."""


class ConfigError(Exception):
    """A setting has a value the relay cannot run with; the message names it."""


def _comma_list(value: object) -> object:
    """`a, b,,c` -> ("a", "b", "c"): how every list setting is written in the environment."""
    if isinstance(value, str):
        return tuple(part.strip() for part in value.split(",") if part.strip())
    return value


def _empty_is_unset(value: object) -> object:
    """An empty or blank variable means unset (a Helm value rendered as "")."""
    return None if isinstance(value, str) and not value.strip() else value


def _check_secrets(secrets: tuple[SecretStr, ...]) -> tuple[SecretStr, ...]:
    for n, secret in enumerate(secrets, 1):
        if len(secret.get_secret_value().encode()) < MIN_SECRET_BYTES:
            raise ValueError(f"secret #{n} is shorter than {MIN_SECRET_BYTES} bytes")
    return secrets


_URL_CREDENTIALS = re.compile(r"(?P<scheme>[a-z]+://)[^/@\s'\",]*@")
_QUERY_PASSWORD = re.compile(r"(?P<key>password=)[^&\s'\",]*", re.IGNORECASE)
_SHARD_NAME = re.compile(r"[A-Za-z0-9/][A-Za-z0-9._:/-]{0,127}")


def redact(text: str) -> str:
    """`text` with the credentials of every URL in it replaced by `***` (for logs, errors)."""
    text = _URL_CREDENTIALS.sub(r"\g<scheme>***@", text)
    return _QUERY_PASSWORD.sub(r"\g<key>***", text)


@dataclass(frozen=True)
class RedisEndpoint:
    """One shard of RELAY_REDIS_URLS: `[name=]redis[s]://[user:password@]host[:port][/db]`."""

    name: str
    """The shard's identity in rendezvous hashing: rooms are placed by it, so it must not
    change when a password, TLS or an address does. Default: `host:port` (`/db` if not 0)."""
    url: str
    """The URL without credentials: safe to connect with and to log."""
    username: str | None = None
    """A user inside the URL (deprecated: use RELAY_REDIS_USERNAME)."""
    password: SecretStr | None = None
    """A password inside the URL (deprecated: use RELAY_REDIS_PASSWORD or _FILE)."""
    master: str | None = None
    """`sentinel://<master>/<db>`: the master's name at RELAY_REDIS_SENTINELS."""

    @classmethod
    def parse(cls, entry: str) -> RedisEndpoint:
        """Parse one entry, or raise ValueError that names it without its credentials."""
        name, sep, url = entry.partition("=")
        if not sep or "://" in name:
            name, url = "", entry
        shown = redact(entry)
        parts = urlsplit(url)
        if parts.scheme == "sentinel":
            return cls._sentinel(name, parts.hostname or "", parts.path, shown)
        if parts.scheme not in ("redis", "rediss", "unix"):
            raise ValueError(f"{shown!r} is not a redis://, rediss://, unix:// or sentinel:// URL")
        try:
            port = parts.port
        except ValueError as exc:
            raise ValueError(f"{shown!r} has no valid port") from exc
        if parts.scheme == "unix":
            default_name, address = parts.path, parts.path
        else:
            if not parts.hostname:
                raise ValueError(f"{shown!r} names no host")
            db = parts.path.strip("/") or "0"
            host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
            address = f"{host}:{port or 6379}"
            default_name = address if db == "0" else f"{address}/{db}"
            address += parts.path
        name = name.strip() or default_name
        if not _SHARD_NAME.fullmatch(name):
            raise ValueError(
                f"shard name {name!r} in {shown!r}: expected [A-Za-z0-9._:/-]{{1,128}}"
            )
        clean = f"{parts.scheme}://{address}"
        if parts.query:
            if "password" in parse_qs(parts.query):
                raise ValueError(
                    f"{redact(parts.netloc + parts.path)!r}: a password in the query is "
                    "not accepted, set RELAY_REDIS_PASSWORD or _FILE"
                )
            clean += f"?{parts.query}"
        username = unquote(parts.username) if parts.username else None
        password = SecretStr(unquote(parts.password)) if parts.password else None
        return cls(name, clean, username, password)

    @classmethod
    def _sentinel(cls, name: str, master: str, path: str, shown: str) -> RedisEndpoint:
        if "@" in shown or not _SHARD_NAME.fullmatch(master):
            raise ValueError(f"{shown!r}: expected sentinel://<master name>[/<db>]")
        db = path.strip("/") or "0"
        if not db.isdigit():
            raise ValueError(f"{shown!r}: the database {db!r} is not a number")
        default = master if db == "0" else f"{master}/{db}"
        return cls(name.strip() or default, f"sentinel://{master}/{db}", master=master)


CommaList = Annotated[tuple[str, ...], NoDecode, BeforeValidator(_comma_list)]
"""A list setting: comma-separated in the environment, blanks dropped."""
JwtSecrets = Annotated[
    tuple[SecretStr, ...],
    NoDecode,
    BeforeValidator(_comma_list),
    AfterValidator(_check_secrets),
]
"""HS256 secrets, comma-separated, each 32+ bytes (RELAY_JWT_SECRET)."""
OptionalText = Annotated[str | None, BeforeValidator(_empty_is_unset)]


class Settings(BaseSettings):
    """Everything the relay reads from its environment."""

    model_config = SettingsConfigDict(env_prefix="RELAY_", extra="ignore", frozen=True)

    host: str = "0.0.0.0"
    """Address to listen on."""
    port: int = Field(8080, ge=1, le=65535)
    """Player port: /ws, /healthz, /readyz and the demo page."""
    admin_port: int = Field(9090, ge=0, le=65535)
    """Admin port: /metrics and the server API (/api/v1, docs/api.md), for a ClusterIP
    Service only. 0: serve them on the player port too (one port, for a laptop or tests)."""
    api_keys: JwtSecrets = ()
    """Server API keys, comma-separated, 32+ bytes each; all are accepted (list two while
    rotating). None and no JWT key: the API answers 404 (except embedded with auth off)."""
    presence_max_members: int = Field(100, ge=0, le=100_000)
    """A presence room with more members than this reports counts only (no member list)."""
    redis_urls: CommaList = ()
    """Comma-separated Redis shards, each `[name=]redis://host:port[/db]` (`rediss://` for
    TLS). Rooms are placed on shards by the name (default `host:port`), so a shard keeps its
    rooms when its password or address changes. Empty: embedded single-node broker."""
    redis_sentinels: CommaList = ()
    """Comma-separated Sentinels (`host:port`); with them, RELAY_REDIS_URLS entries are
    `[name=]sentinel://<master name>[/<db>]` and each shard follows its master's failovers."""
    redis_cluster: bool = False
    """RELAY_REDIS_URLS are seed nodes of one Redis Cluster (7.0+), not shards: rooms go
    where the cluster places their slot (relay.broker.slots), events by SPUBLISH."""
    redis_username: OptionalText = None
    """Redis ACL user (unset: `default`). Credentials inside URLs still work, deprecated."""
    redis_password: Annotated[SecretStr | None, BeforeValidator(_empty_is_unset)] = None
    """Password of the Redis user; or use RELAY_REDIS_PASSWORD_FILE (not both)."""
    redis_password_file: OptionalText = None
    """A file holding the password (a mounted Kubernetes Secret); read on every new Redis
    connection, so a rotated Secret is used without a restart."""
    redis_ca_file: OptionalText = None
    """PEM CA bundle verifying the servers of `rediss://` shards (unset: the system CAs)."""
    redis_sentinel_username: OptionalText = None
    """User the Sentinels know this relay as (a Sentinel ACL user, Redis 6.2+); unset: the
    Sentinel's `default` user, i.e. only its `requirepass` password."""
    redis_sentinel_password: Annotated[SecretStr | None, BeforeValidator(_empty_is_unset)] = None
    """Password for the Sentinels (their `requirepass`, or the Sentinel ACL user's); or use
    RELAY_REDIS_SENTINEL_PASSWORD_FILE (not both). Unset: the Sentinels are asked without
    one. Never the Redis password: Sentinels and Redis servers have their own users."""
    redis_sentinel_password_file: OptionalText = None
    """A file holding the Sentinels' password, read on every new Sentinel connection."""
    redis_sentinel_tls: bool = False
    """TLS to the Sentinels and to the masters and replicas they name, each verified against
    RELAY_REDIS_CA_FILE (unset: the system CAs) with its hostname checked: the Sentinels must
    name servers by the DNS names their certificates carry (`replica-announce-ip`, Sentinel
    `resolve-hostnames` and `announce-hostnames`), not by IP."""
    node_id: str = Field(default_factory=socket.gethostname, min_length=1, max_length=128)
    """Name of this relay server, sent in `welcome` and on every envelope."""
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    """Log level of the relay and of uvicorn."""
    compression: bool = False
    """Offer permessage-deflate. Off by default: it about doubles CPU per delivered message."""
    max_message_bytes: int = Field(65536, ge=256, le=16 * 1024 * 1024)
    """Largest client message (one JSON line) accepted; larger gets `too_large`."""
    max_rooms_per_connection: int = Field(100, ge=1, le=100_000)
    """Rooms one connection may be in at once; more gets `too_many_rooms`."""
    publish_rate: float = Field(50.0, gt=0)
    """Sustained publishes per second per connection; more gets `rate_limited`."""
    publish_burst: int = Field(100, ge=1)
    """Publishes a connection may send at once before the rate applies."""
    op_rate: float = Field(100.0, gt=0)
    """Sustained ping, join and leave messages per second per connection (publishes have
    RELAY_PUBLISH_RATE); more get `rate_limited`."""
    op_burst: int = Field(200, ge=1)
    """Ping/join/leave a connection may send at once (one frame) before RELAY_OP_RATE applies."""
    max_connections: int = Field(10_000, ge=1)
    """Connections per relay server; more are closed with 1013 (try another node)."""
    send_queue: int = Field(1000, ge=1, le=1_000_000)
    """Messages queued for one connection before it is dropped as a slow consumer (4008)."""
    drain_seconds: float = Field(10.0, ge=0, le=3600)
    """On SIGTERM, sessions are told to reconnect elsewhere, spread over this many seconds."""
    handshake_seconds: float = Field(10.0, gt=0, le=300)
    """A connection's HTTP request head must arrive within this; else 408 and close."""
    heartbeat_seconds: float = Field(25.0, gt=0)
    """WebSocket ping interval, announced to clients in `welcome`."""
    unsubscribe_delay: float = Field(2.0, ge=0)
    """Seconds a room stays subscribed after its last local member left (absorbs flapping)."""
    probe_interval: float = Field(3.0, gt=0)
    """Seconds between probes of this server's own Pub/Sub connection."""
    probe_timeout: float = Field(3.0, gt=0)
    """A probe not back within this many seconds means the Pub/Sub connection is dead."""
    redis_timeout: float = Field(2.0, gt=0)
    """Timeout of one Redis command or connect; past it the command fails as `unavailable`."""
    redis_ack_replicas: int = Field(0, ge=0, le=100)
    """Replicas that must have a durable event before its publish is acked (Redis WAIT);
    fewer within RELAY_REDIS_ACK_TIMEOUT: the publish gets `unavailable` (the event may or
    may not survive a failover; retry with the same id). 0: acked once the master has it.
    Volatile rooms never wait."""
    redis_ack_timeout: float = Field(0.5, gt=0)
    """Seconds the replicas have to confirm a durable event (RELAY_REDIS_ACK_REPLICAS);
    below RELAY_REDIS_TIMEOUT: the pod's other durable publishes to the shard wait behind it
    (volatile ones go on another connection: relay.broker.replicas)."""
    rooms: tuple[RoomPolicy, ...] = ()
    """Room policies as a JSON list, first match wins; unmatched rooms are durable."""
    load_report_seconds: float = Field(5.0, gt=0, le=60)
    """How often this server writes its connection count for the operator's autoscaler
    (the report expires after relay.contract.LOAD_REPORT_TTL_SECONDS)."""
    dedupe_seconds: int = Field(300, ge=1, le=86_400)
    """How long a publish `id` is remembered, so a retry is acked without storing twice."""
    auth: Annotated[Literal["none", "jwt"] | None, BeforeValidator(_empty_is_unset)] = None
    """`jwt`: every connection needs a token (docs/security.md); `none`: an open relay.
    Unset: `none` for the embedded broker (a laptop), a start error with Redis configured."""
    jwt_secret: JwtSecrets = ()
    """HS256 secrets, comma-separated, 32+ bytes each: all verify, the first signs
    (`relay token`); two are listed while a secret is rotated."""
    jwt_public_key: OptionalText = None
    """PEM public key(s) verifying RS256 (RSA 2048+) or ES256 (EC P-256) tokens; several
    concatenated PEM blocks while a key pair is rotated."""
    jwt_audience: OptionalText = None
    """When set, tokens must carry this `aud`; when unset, tokens with an `aud` are refused."""
    jwt_issuer: OptionalText = None
    """When set, tokens must carry this `iss`."""
    allowed_origins: CommaList = ()
    """Comma-separated browser origins (`https://game.example`) allowed to connect; others
    get HTTP 403. Empty: any origin. Requests without an Origin header (not browsers) pass."""

    @field_validator("redis_urls")
    @classmethod
    def _check_urls(cls, urls: tuple[str, ...]) -> tuple[str, ...]:
        names = [RedisEndpoint.parse(url).name for url in urls]
        twice = sorted({name for name in names if names.count(name) > 1})
        if twice:
            raise ValueError(f"shard {twice[0]!r} is listed twice (give each shard its own name)")
        return urls

    @field_validator("redis_sentinels")
    @classmethod
    def _check_sentinels(cls, sentinels: tuple[str, ...]) -> tuple[str, ...]:
        for sentinel in sentinels:
            host, _, port = sentinel.rpartition(":")
            if not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise ValueError(f"{sentinel!r} is not host:port")
        return sentinels

    @property
    def sentinel_addresses(self) -> tuple[tuple[str, int], ...]:
        """RELAY_REDIS_SENTINELS as (host, port) pairs."""
        pairs = (sentinel.rpartition(":") for sentinel in self.redis_sentinels)
        return tuple((host.strip("[]"), int(port)) for host, _, port in pairs)

    @field_validator("redis_password_file", "redis_ca_file", "redis_sentinel_password_file")
    @classmethod
    def _check_readable(cls, path: str | None) -> str | None:
        if path is not None and not Path(path).is_file():
            raise ValueError(f"{path!r} is not a readable file")
        return path

    @property
    def redis_endpoints(self) -> tuple[RedisEndpoint, ...]:
        """RELAY_REDIS_URLS parsed: one endpoint per shard, credentials split off."""
        return tuple(RedisEndpoint.parse(url) for url in self.redis_urls)

    @model_validator(mode="after")
    def _check_ports(self) -> Settings:
        if self.admin_port == self.port:
            raise ValueError(
                f"RELAY_ADMIN_PORT={self.admin_port} is RELAY_PORT: use 0 to serve the admin "
                "routes on the player port, or another port"
            )
        return self

    @model_validator(mode="after")
    def _check_ack_timeout(self) -> Settings:
        # While Redis waits for the replicas it runs no other command of the acked publish
        # connection, whose commands time out after RELAY_REDIS_TIMEOUT.
        if self.redis_ack_replicas and self.redis_ack_timeout >= self.redis_timeout:
            raise ValueError(
                f"RELAY_REDIS_ACK_TIMEOUT={self.redis_ack_timeout} is not below "
                f"RELAY_REDIS_TIMEOUT={self.redis_timeout}: publishes waiting behind a "
                "replica confirmation would time out; lower it or raise RELAY_REDIS_TIMEOUT"
            )
        return self

    @field_validator("jwt_public_key")
    @classmethod
    def _check_public_key(cls, pem: str | None) -> str | None:
        if pem is not None:
            load_public_keys(pem)
        return pem

    @field_validator("allowed_origins")
    @classmethod
    def _check_origins(cls, origins: tuple[str, ...]) -> tuple[str, ...]:
        origins = tuple(origin.rstrip("/").lower() for origin in origins)
        for origin in origins:
            if not re.fullmatch(r"https?://[^/\s]+", origin):
                raise ValueError(f"{origin!r} is not an origin like https://game.example")
        return origins

    @model_validator(mode="after")
    def _check_redis_credentials(self) -> Settings:
        if self.redis_password is not None and self.redis_password_file is not None:
            raise ValueError(
                "RELAY_REDIS_PASSWORD and RELAY_REDIS_PASSWORD_FILE are both set: set one"
            )
        if self.redis_sentinel_password is not None and self.redis_sentinel_password_file:
            raise ValueError(
                "RELAY_REDIS_SENTINEL_PASSWORD and RELAY_REDIS_SENTINEL_PASSWORD_FILE are both "
                "set: set one"
            )
        sentinel_credentials = (
            self.redis_sentinel_username,
            self.redis_sentinel_password,
            self.redis_sentinel_password_file,
        )
        if any(value is not None for value in sentinel_credentials) and not self.redis_sentinels:
            raise ValueError(
                "RELAY_REDIS_SENTINEL_USERNAME/_PASSWORD/_PASSWORD_FILE are set but "
                "RELAY_REDIS_SENTINELS is empty: list the Sentinels (host:port) or unset them"
            )
        masters = [e.name for e in self.redis_endpoints if e.master is not None]
        if masters and not self.redis_sentinels:
            raise ValueError(
                f"RELAY_REDIS_URLS names Sentinel master {masters[0]!r} but "
                "RELAY_REDIS_SENTINELS is empty: list the Sentinels (host:port)"
            )
        if self.redis_sentinel_tls and not self.redis_sentinels:
            raise ValueError(
                "RELAY_REDIS_SENTINEL_TLS is set but RELAY_REDIS_SENTINELS is empty: list the "
                "Sentinels (host:port) or unset it"
            )
        if (
            self.redis_ca_file
            and not self.redis_sentinel_tls
            and not any(u.url.startswith("rediss:") for u in self.redis_endpoints)
        ):
            raise ValueError(
                "RELAY_REDIS_CA_FILE is set but no shard in RELAY_REDIS_URLS uses rediss:// (TLS) "
                "and RELAY_REDIS_SENTINEL_TLS is not set"
            )
        return self

    @model_validator(mode="after")
    def _check_cluster(self) -> Settings:
        if not self.redis_cluster:
            return self
        where = "RELAY_REDIS_CLUSTER=true"
        if not self.redis_urls:
            raise ValueError(
                f"{where} without RELAY_REDIS_URLS: list seed nodes (redis://host:port)"
            )
        if self.redis_sentinels:
            raise ValueError(
                f"{where} with RELAY_REDIS_SENTINELS: a Redis Cluster fails over by itself; "
                "use one or the other"
            )
        for entry, endpoint in zip(self.redis_urls, self.redis_endpoints, strict=True):
            shown = redact(entry)
            if endpoint.master is not None:
                raise ValueError(f"{where}: {shown!r} is a Sentinel master, not a cluster node")
            if endpoint.url.startswith("unix:"):
                raise ValueError(f"{where}: {shown!r}: cluster nodes are reached by host:port")
            named, sep, _ = entry.partition("=")
            if sep and "://" not in named:
                raise ValueError(
                    f"{where}: {shown!r} names a shard; the cluster places the rooms (no "
                    "shard map): give the seed nodes' URLs only"
                )
            if urlsplit(endpoint.url).path.strip("/") not in ("", "0"):
                raise ValueError(f"{where}: {shown!r}: a Redis Cluster has database 0 only")
        schemes = {e.url.partition("://")[0] for e in self.redis_endpoints}
        if len(schemes) > 1:
            raise ValueError(f"{where}: seed nodes mix redis:// and rediss:// (TLS): use one")
        return self

    @model_validator(mode="after")
    def _check_auth(self) -> Settings:
        if self.auth is None and self.redis_urls:
            raise ValueError(
                "RELAY_AUTH (unset) with RELAY_REDIS_URLS set: choose RELAY_AUTH=jwt (with "
                "RELAY_JWT_SECRET or RELAY_JWT_PUBLIC_KEY) to require tokens, or RELAY_AUTH=none "
                "for an open relay that anyone who reaches it can read and publish to"
            )
        if self.auth == "jwt" and not self.jwt_secret and self.jwt_public_key is None:
            raise ValueError(
                "RELAY_AUTH='jwt' without a key: set RELAY_JWT_SECRET (HS256, 32+ bytes) or "
                "RELAY_JWT_PUBLIC_KEY (RS256/ES256, PEM) to verify tokens with"
            )
        return self


class TokenSettings(BaseSettings):
    """What `relay token` reads: the signing secrets and the claims relays check, parsed by
    the same types as `Settings` (a secret relays would refuse is refused here too)."""

    model_config = SettingsConfigDict(env_prefix="RELAY_", extra="ignore", frozen=True)

    jwt_secret: JwtSecrets = ()
    """As `Settings.jwt_secret`; tokens are signed with the first."""
    jwt_audience: OptionalText = None
    """As `Settings.jwt_audience`: written into the token's `aud`."""
    jwt_issuer: OptionalText = None
    """As `Settings.jwt_issuer`: written into the token's `iss`."""


def load_public_keys(pem: str) -> tuple[PublicKey, ...]:
    """The RSA (2048+ bits) or EC P-256 public keys in `pem`, or ValueError saying why not.

    Accepts several concatenated PEM blocks (a key rotation) and literal `\\n` for newlines
    (a PEM squeezed into one line of an env file).
    """
    blocks = [m.group(0) for m in _PEM_BLOCK.finditer(pem.replace("\\n", "\n"))]
    if not blocks:
        raise ValueError("no PEM block (-----BEGIN PUBLIC KEY----- ...) found")
    keys: list[PublicKey] = []
    for n, block in enumerate(blocks, 1):
        try:
            key = serialization.load_pem_public_key(block.encode())
        except (ValueError, UnsupportedAlgorithm) as exc:
            raise ValueError(f"PEM block #{n} is not a public key: {exc}") from exc
        expected = f"PEM block #{n}: expected an RSA 2048+ bit or an EC P-256 public key"
        if isinstance(key, rsa.RSAPublicKey):
            if key.key_size < MIN_RSA_BITS:
                raise ValueError(f"{expected}, got RSA {key.key_size} bits")
        elif isinstance(key, ec.EllipticCurvePublicKey):
            if not isinstance(key.curve, ec.SECP256R1):
                raise ValueError(f"{expected}, got EC {key.curve.name}")
        else:
            raise ValueError(f"{expected}, got {type(key).__name__}")
        keys.append(key)
    return tuple(keys)


AnySettings = TypeVar("AnySettings", bound=BaseSettings)


def load_settings() -> Settings:
    """Read the relay's settings from the environment, or raise ConfigError with one clear line."""
    return load(Settings)


def load(kind: type[AnySettings]) -> AnySettings:
    """Read `kind` from the environment, or raise ConfigError with one clear line."""
    try:
        return kind()
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            message = error["msg"].removeprefix("Value error, ")
            if not error["loc"]:  # a rule across settings: the message names them
                problems.append(message)
                continue
            field, *inside = [str(part) for part in error["loc"]]
            where = f" at {'.'.join(inside)}" if inside else ""
            shown = "(not shown)" if field in _UNSHOWN else redact(repr(error.get("input")))
            problems.append(f"RELAY_{field.upper()}={shown}{where}: {message}")
        line = " ".join(("invalid setting " + "; ".join(problems)).split())  # one line
        raise ConfigError(line) from exc
