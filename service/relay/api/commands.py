"""CLI verbs on the server API: `relay publish --api`, `history`, `presence`, `disconnect`.

They read the admin URL from `--api` (default: this machine's admin port) and the
credentials from `--api-key` / RELAY_API_KEY or `--token` / RELAY_API_TOKEN (a JWT with
an `api` claim), and print the API's answer as one JSON line.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any, Final

import httpx
import orjson
from pydantic import BaseModel

from relay import contract
from relay.api.client import ApiCallError, RelayApi

DEFAULT_ADMIN_URL: Final = f"http://127.0.0.1:{contract.DEFAULT_ADMIN_PORT}"
COMMANDS: Final = ("history", "presence", "disconnect")


def add_credentials(parser: argparse.ArgumentParser, *, api_default: str | None) -> None:
    parser.add_argument(
        "--api",
        default=api_default,
        metavar="ADMIN_URL",
        help=f"the relay's admin URL (server API), e.g. {DEFAULT_ADMIN_URL}",
    )
    parser.add_argument("--api-key", default=os.environ.get("RELAY_API_KEY"))
    parser.add_argument(
        "--api-token",
        default=os.environ.get("RELAY_API_TOKEN"),
        help="a JWT with an `api` claim, instead of an API key",
    )


def add_parsers(commands: Any) -> None:
    history = commands.add_parser("history", help="print a page of a durable room's history")
    history.add_argument("room")
    history.add_argument("--since", type=int)
    history.add_argument("--epoch")
    history.add_argument("--limit", type=int, default=100)
    history.add_argument("--reverse", action="store_true")
    history.add_argument("--cursor")
    add_credentials(history, api_default=DEFAULT_ADMIN_URL)

    presence = commands.add_parser("presence", help="print who is in a presence room")
    presence.add_argument("room")
    presence.add_argument("--stats", action="store_true", help="counts only")
    add_credentials(presence, api_default=DEFAULT_ADMIN_URL)

    disconnect = commands.add_parser(
        "disconnect", help="close every connection of a token subject, on every pod (4003)"
    )
    disconnect.add_argument("subject")
    disconnect.add_argument("--reason", default="disconnected")
    disconnect.add_argument("--room", help="only remove the subject from this room")
    add_credentials(disconnect, api_default=DEFAULT_ADMIN_URL)


def run(args: argparse.Namespace) -> int:
    """Run a server API verb; 0 on success, 1 when the API refused or was unreachable."""
    try:
        with RelayApi(args.api, api_key=args.api_key, token=args.api_token) as api:
            answer = _call(api, args)
    except ApiCallError as exc:
        print(f"relay {args.command}: {exc}", file=sys.stderr)
        return 1
    except httpx.HTTPError as exc:
        print(f"relay {args.command}: {args.api}: {exc!r}", file=sys.stderr)
        return 1
    except ValueError as exc:
        print(f"relay {args.command}: {exc}", file=sys.stderr)
        return 2
    print(answer.model_dump_json(by_alias=True))
    return 0


def _call(api: RelayApi, args: argparse.Namespace) -> BaseModel:
    if args.command == "publish":
        try:
            data = orjson.loads(args.data)
        except orjson.JSONDecodeError as exc:
            raise ValueError(f"DATA is not JSON: {exc}") from exc
        return api.publish(args.room, data, id=args.id)
    if args.command == "history":
        return api.history(
            args.room,
            since=args.since,
            epoch=args.epoch,
            limit=args.limit,
            reverse=args.reverse,
            cursor=args.cursor,
        )
    if args.command == "presence":
        return api.presence_stats(args.room) if args.stats else api.presence(args.room)
    if args.room is not None:
        return api.remove(args.subject, args.room)
    return api.disconnect(args.subject, args.reason)
