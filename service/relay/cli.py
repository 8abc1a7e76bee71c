"""`relay`: serve, publish, tail, token, check, shards."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import time
import uuid
from collections.abc import Sequence

import orjson
from redis.asyncio import Redis
from redis.exceptions import RedisError

from gamecluster_client import Connection, GameClusterError, HandshakeError
from relay import auth, contract, tracing
from relay.api import commands as api_commands
from relay.broker import describe, shardmap
from relay.broker.connection import Connector
from relay.config import ConfigError, TokenSettings, load, load_settings

DEFAULT_URL = f"ws://127.0.0.1:{contract.HTTP_PORT}{contract.WS_PATH}"
WAIT_MARGIN_SECONDS = 30.0
"""Added to a switch's two phase deadlines to bound `relay shards switch --wait`: room for
a dead relay to drop out of the move phase's barrier after its deadline. Without a bound a
stalled move phase (a hung relay, looking alive) held the command, and the `kubectl exec`
or job running it, for ever."""


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="relay", description="GameCluster WebSocket relay")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run a relay server (settings from RELAY_* env)")
    serve.add_argument("--host", help="overrides RELAY_HOST")
    serve.add_argument("--port", type=int, help="overrides RELAY_PORT")

    publish = commands.add_parser("publish", help="publish one event and wait for its ack")
    publish.add_argument("room")
    publish.add_argument("data", help="the event's data, as JSON")
    publish.add_argument("--url", default=DEFAULT_URL)
    publish.add_argument("--token", default=os.environ.get("RELAY_TOKEN"))
    publish.add_argument("--id", help="publish id (exactly-once storage); default: a new UUID")
    api_commands.add_credentials(publish, api_default=None)

    tail = commands.add_parser("tail", help="print a room's events as JSON lines")
    tail.add_argument("room")
    tail.add_argument("--url", default=DEFAULT_URL)
    tail.add_argument("--token", default=os.environ.get("RELAY_TOKEN"))

    token = commands.add_parser(
        "token", help="print an HS256 token signed with RELAY_JWT_SECRET (audience/issuer from env)"
    )
    token.add_argument("--sub", required=True, help="the subject: who connects")
    token.add_argument("--join", nargs="+", default=[], metavar="PATTERN", help="room globs")
    token.add_argument("--publish", nargs="+", default=[], metavar="PATTERN", help="room globs")
    token.add_argument("--ttl", default="1h", help="lifetime: 90, 45s, 30m, 1h30m, 7d")
    token.add_argument(
        "--api-claim", action="store_true", help="add `api: true`: may call the server API"
    )

    check = commands.add_parser("check", help="publish to a private room and expect it back")
    check.add_argument("url")
    check.add_argument("--token", default=os.environ.get("RELAY_TOKEN"))
    check.add_argument("--timeout", type=float, default=10.0)

    shards = commands.add_parser(
        "shards",
        help="show or switch the active shard map (Redis settings from RELAY_* env, as `serve`)",
    )
    shards_verbs = shards.add_subparsers(dest="verb", required=True)
    shards_verbs.add_parser("show", help="print the map's version, shards and switch phase")
    switch = shards_verbs.add_parser(
        "switch", help="switch every relay server to these shards (names from RELAY_REDIS_URLS)"
    )
    switch.add_argument("names", help="comma-separated shard names; the control shard first")
    switch.add_argument(
        "--timeout",
        type=float,
        default=shardmap.SWITCH_TIMEOUT_SECONDS,
        help="a prepare phase not done by then aborts; a move phase is reported stalled",
    )
    switch.add_argument("--wait", action="store_true", help="return when the switch has ended")
    switch.add_argument(
        "--wait-timeout",
        type=float,
        help="with --wait: stop waiting after this many seconds, exit 1 naming the phase and "
        "the relay servers not done (the switch goes on); default: twice --timeout (the "
        f"prepare phase's deadline, then the move phase's) plus {WAIT_MARGIN_SECONDS:g}s",
    )

    api_commands.add_parsers(commands)

    args = parser.parse_args(argv)
    if args.command in api_commands.COMMANDS or (args.command == "publish" and args.api):
        if args.command == "publish" and args.id is None:
            args.id = str(uuid.uuid4())
        return api_commands.run(args)
    if args.command == "serve":
        return _serve(args.host, args.port)
    if args.command == "token":
        return _token(args.sub, args.join, args.publish, args.ttl, args.api_claim)
    if args.command == "shards":
        return asyncio.run(_shards(args))
    try:
        if args.command == "publish":
            return asyncio.run(_publish(args.url, args.token, args.room, args.data, args.id))
        if args.command == "tail":
            return asyncio.run(_tail(args.url, args.token, args.room))
        return asyncio.run(_check(args.url, args.token, args.timeout))
    except KeyboardInterrupt:
        return 130
    except HandshakeError as exc:  # the handshake was refused: say why (401, 403, 503)
        print(
            f"relay {args.command}: refused with HTTP {exc.status}: {exc.reason}", file=sys.stderr
        )
        return 1
    except (OSError, TimeoutError, GameClusterError) as exc:
        print(f"relay {args.command}: {exc!r}", file=sys.stderr)
        return 1


def _serve(host: str | None, port: int | None) -> int:
    if host is not None:
        os.environ[contract.ENV_HOST] = host
    if port is not None:
        os.environ[contract.ENV_PORT] = str(port)
    try:
        settings = load_settings()
        tracing.read_env(os.environ)  # fail now, with the variable named, not at startup
    except (ConfigError, tracing.TracingConfigError) as exc:
        print(f"relay serve: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    from relay.core import CoreMissing
    from relay.server import serve  # uvicorn and the app load only for `serve`

    try:
        serve(settings)
    except CoreMissing as exc:
        print(f"relay serve: {exc}", file=sys.stderr)
        return 2
    return 0


async def _shards(args: argparse.Namespace) -> int:
    """`relay shards show|switch`: read or start a switch on the control shard; the relay
    servers carry the switch out (relay.broker.shardmap). Exit 0 when done (or started,
    without --wait), 1 when refused, aborted or unreachable, 2 for bad settings."""
    try:
        settings = load_settings()
    except ConfigError as exc:
        print(f"relay shards: {exc}", file=sys.stderr)
        return 2
    if not settings.redis_endpoints:
        print("relay shards: RELAY_REDIS_URLS is empty: no shards to map", file=sys.stderr)
        return 2
    if settings.redis_cluster:
        print(
            "relay shards: RELAY_REDIS_CLUSTER=true: Redis Cluster places the rooms by hash "
            "slot, there is no shard map to show or switch (reshard the cluster with "
            "redis-cli --cluster reshard; the relay servers follow the slots)",
            file=sys.stderr,
        )
        return 2
    control = settings.redis_endpoints[0]
    connector = Connector.from_settings(settings)
    client = connector.client(control, timeout=settings.redis_timeout, retries=1)
    try:
        if args.verb == "show":
            state = await shardmap.read(client)
            shown = state.describe() if state is not None else {"version": None}
            print(orjson.dumps(shown).decode())
            return 0
        names = [n.strip() for n in args.names.split(",") if n.strip()]
        known = [e.name for e in settings.redis_endpoints]
        shardmap.validate(names, control.name, known)
        state = await shardmap.begin(client, names, control_name=control.name, timeout=args.timeout)
        print(orjson.dumps(state.describe()).decode())
        if not args.wait:
            return 0
        limit = args.wait_timeout
        if limit is None:
            limit = 2 * args.timeout + WAIT_MARGIN_SECONDS
        give_up = time.monotonic() + limit
        while state.switching:
            if time.monotonic() >= give_up:
                print(orjson.dumps(state.describe()).decode())
                print(f"relay shards: {await _not_done(client, state, limit)}", file=sys.stderr)
                return 1
            await asyncio.sleep(shardmap.SWITCH_POLL_SECONDS)
            state = await shardmap.read(client) or state
        print(orjson.dumps(state.describe()).decode())
        return 0 if state.active.names == tuple(names) else 1
    except shardmap.ShardMapError as exc:
        print(f"relay shards: {exc}", file=sys.stderr)
        return 1
    except (OSError, RedisError) as exc:
        print(f"relay shards: Redis {control.url}: {describe(exc)}", file=sys.stderr)
        return 1
    finally:
        await client.aclose()
        await connector.aclose()


async def _not_done(client: Redis, state: shardmap.MapState, waited: float) -> str:
    """Why `switch --wait` gave up: the phase, and the relay servers it waits for."""
    unacked = await shardmap.unacked(client, state)
    waiting = ", ".join(
        f"{node} (seen {age:.1f}s ago)" for node, age in sorted(unacked.items(), key=lambda x: x[1])
    )
    return (
        f"stopped waiting after {waited:g}s: the switch is still in its {state.phase} phase"
        f"{' (stalled: past its deadline)' if state.stalled(shardmap.now_ms()) else ''}, "
        f"waiting for {waiting or 'no relay server (the next read of the map advances it)'}; "
        "it goes on without this command: `relay shards show` follows it"
    )


def _token(subject: str, join: list[str], publish: list[str], ttl: str, api: bool = False) -> int:
    """Mint with the first secret of RELAY_JWT_SECRET, the one relays verify first."""
    try:
        settings = load(TokenSettings)  # the relay's own parsing: what it refuses, we refuse
    except ConfigError as exc:
        print(f"relay token: {exc}", file=sys.stderr)
        return 2
    if not settings.jwt_secret:
        print(f"relay token: {contract.ENV_JWT_SECRET} is not set", file=sys.stderr)
        return 2
    try:
        seconds = auth.parse_duration(ttl)
    except ValueError as exc:
        print(f"relay token: --ttl {exc}", file=sys.stderr)
        return 2
    print(
        auth.mint(
            settings.jwt_secret[0].get_secret_value(),
            subject=subject,
            join=join,
            publish=publish,
            ttl=seconds,
            audience=settings.jwt_audience,
            issuer=settings.jwt_issuer,
            api=api,
        )
    )
    return 0


async def _publish(url: str, token: str | None, room: str, data: str, msg_id: str | None) -> int:
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        print(f"relay publish: DATA is not JSON: {exc}", file=sys.stderr)
        return 2
    async with Connection(url, token=token) as client:
        ack = await client.publish(room, value, id=msg_id or str(uuid.uuid4()))
    print(orjson.dumps(ack).decode())
    return 0


async def _tail(url: str, token: str | None, room: str) -> int:
    async with Connection(url, token=token) as client:
        await client.join(room)
        async for message in client.events():
            sys.stdout.write(orjson.dumps(message).decode() + "\n")
            sys.stdout.flush()
    return 0


async def _check(url: str, token: str | None, seconds: float) -> int:
    """Join a private room, publish, and expect the ack and our own event back."""
    room = f"check:{uuid.uuid4().hex}"
    msg_id = str(uuid.uuid4())
    async with Connection(url, token=token, timeout=seconds) as client:
        await client.join(room)
        ack = await client.publish(room, {"check": msg_id}, id=msg_id)
        event = await client.receive(seconds)
    if event.get("op") != "event" or event.get("data") != {"check": msg_id}:
        print(f"relay check: FAILED, expected our event back, got {event}", file=sys.stderr)
        return 1
    print(f"relay check: ok, node {client.welcome.get('node')}, ack {ack}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
