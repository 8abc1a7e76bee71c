"""Relay settings, read from `RELAY_*` environment variables and validated at start.

Environment-only on purpose: Helm values and the operator's pod env map onto these
fields one to one. A bad value stops the process with one line that names the
variable, the value and what was expected (see `load_settings`).
"""

from __future__ import annotations

import socket
from typing import Annotated, Literal

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from relay.rooms import RoomPolicy


class ConfigError(Exception):
    """A setting has a value the relay cannot run with; the message names it."""


class Settings(BaseSettings):
    """Everything the relay reads from its environment."""

    model_config = SettingsConfigDict(env_prefix="RELAY_", extra="ignore", frozen=True)

    host: str = "0.0.0.0"
    """Address to listen on."""
    port: int = Field(8080, ge=1, le=65535)
    """Port for WebSocket and HTTP (/healthz, /readyz, /metrics)."""
    redis_urls: Annotated[tuple[str, ...], NoDecode] = ()
    """Comma-separated Redis URLs (one per shard). Empty: embedded single-node broker."""
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
    max_connections: int = Field(10_000, ge=1)
    """Connections per relay server; more are closed with 1013 (try another node)."""
    send_queue: int = Field(1000, ge=1, le=1_000_000)
    """Messages queued for one connection before it is dropped as a slow consumer (4008)."""
    drain_seconds: float = Field(10.0, ge=0, le=3600)
    """On SIGTERM, sessions are told to reconnect elsewhere, spread over this many seconds."""
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
    rooms: tuple[RoomPolicy, ...] = ()
    """Room policies as a JSON list, first match wins; unmatched rooms are durable."""
    dedupe_seconds: int = Field(300, ge=1, le=86_400)
    """How long a publish `id` is remembered, so a retry is acked without storing twice."""

    @field_validator("redis_urls", mode="before")
    @classmethod
    def _split_urls(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(url.strip() for url in value.split(",") if url.strip())
        return value

    @field_validator("redis_urls")
    @classmethod
    def _check_urls(cls, urls: tuple[str, ...]) -> tuple[str, ...]:
        for url in urls:
            if not url.startswith(("redis://", "rediss://", "unix://")):
                raise ValueError(f"{url!r} is not a redis://, rediss:// or unix:// URL")
        if len(set(urls)) != len(urls):
            raise ValueError("the same URL is listed twice")
        return urls


def load_settings() -> Settings:
    """Read the settings from the environment, or raise ConfigError with one clear line."""
    try:
        return Settings()
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            field, *inside = [str(part) for part in error["loc"]] or ["?"]
            where = f" at {'.'.join(inside)}" if inside else ""
            problems.append(f"RELAY_{field.upper()}={error.get('input')!r}{where}: {error['msg']}")
        raise ConfigError("invalid setting " + "; ".join(problems)) from exc
