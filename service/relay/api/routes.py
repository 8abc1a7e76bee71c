"""The server API's endpoints, `/metrics`, the OpenAPI schema and the docs page.

`add_admin_routes` puts them on an app: the admin port's own app, or the player app
when RELAY_ADMIN_PORT=0. Every error answer has the `ApiError` body; the handlers
below turn validation errors, unknown paths and unexpected failures into it (a 500
names a correlation id that is in the log line, never the exception text).
"""

from __future__ import annotations

import fnmatch
import logging
import re
import secrets
import time
from collections.abc import Awaitable
from pathlib import Path
from typing import Annotated, Any, Final, TypeVar

import orjson
from fastapi import APIRouter, Depends, FastAPI, Header, Query, Request
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from relay import contract, protocol, tracing
from relay.api import models
from relay.api.keys import ApiAuth, ApiRefused
from relay.broker import BrokerUnavailable, NotReplicated
from relay.broker.shardmap import ShardMapError
from relay.node import RelayNode
from relay.protocol import ProtocolError

log = logging.getLogger("relay.api")
T = TypeVar("T")

DOCS_PAGE: Final = Path(__file__).parent / "docs.html"
_ROOM = re.compile(models.ROOM_REGEX)
_STATUS_CODES: Final[dict[int, models.ErrorCodeName]] = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "bad_request",
    409: "epoch_mismatch",
    413: "too_large",
    422: "bad_request",
    503: "unavailable",
}
ERRORS: Final[dict[int | str, dict[str, Any]]] = {
    status: {"model": models.ApiError, "description": f"`{code}`"}
    for status, code in (
        (400, "bad_request, not_durable"),
        (401, "unauthorized"),
        (403, "forbidden"),
        (404, "not_found (also: the API is off)"),
        (413, "too_large"),
        (503, "unavailable"),
    )
}


class ApiProblem(Exception):
    def __init__(self, status: int, code: models.ErrorCodeName, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message

    def response(self) -> JSONResponse:
        body = models.ApiError(code=self.code, message=self.message).model_dump()
        headers = (
            {"WWW-Authenticate": 'ApiKey header="x-api-key", Bearer'}
            if self.status == 401
            else None
        )
        return JSONResponse(body, status_code=self.status, headers=headers)


RoomParam = Annotated[
    str,
    PathParam(pattern=models.ROOM_REGEX, description="Room name: 1-128 of A-Z a-z 0-9 _ - . : /"),
]


def add_admin_routes(app: FastAPI, node: RelayNode) -> None:
    """/metrics, /api/v1/..., the schema and /api/docs, with the API's error handlers."""

    @app.get(contract.METRICS_PATH, include_in_schema=False)
    async def metrics() -> Response:
        node.update_gauges()
        return Response(generate_latest(node.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get(contract.API_DOCS_PATH, include_in_schema=False)
    async def docs() -> HTMLResponse:
        return HTMLResponse(DOCS_PAGE.read_text())

    api_auth = ApiAuth.from_settings(node.settings)
    log.info("server API: %s", api_auth.describe())
    app.include_router(_router(node, api_auth), prefix=contract.API_PREFIX)
    app.add_middleware(BodyLimit, limit=models.MAX_BODY_BYTES)
    _add_error_handlers(app)


def _router(node: RelayNode, api_auth: ApiAuth) -> APIRouter:
    async def authorized(request: Request) -> None:
        try:
            api_auth.check(request.headers)
        except ApiRefused as refused:
            raise ApiProblem(
                refused.status, _STATUS_CODES[refused.status], refused.message
            ) from None

    router = APIRouter(dependencies=[Depends(authorized)], responses=ERRORS)

    @router.post("/rooms/{room:path}/events", response_model=models.Published, tags=["publish"])
    async def publish(
        room: RoomParam,
        body: models.PublishRequest,
        idempotency_key: Annotated[str | None, Header(max_length=protocol.MAX_ID_CHARS)] = None,
        traceparent: Annotated[str | None, Header(max_length=128)] = None,
        tracestate: Annotated[str | None, Header(max_length=512)] = None,
    ) -> models.Published:
        """Publish one event, as a WebSocket `publish` does: stored in durable rooms
        (`offset`/`epoch` in the answer), at most once per `id` or `Idempotency-Key`."""
        _check_room(room)
        msg_id = body.id or idempotency_key or None
        return await _publish(node, room, body.data, msg_id, traceparent, tracestate)

    @router.post("/publish", response_model=models.BatchResponse, tags=["publish"])
    async def publish_batch(
        body: models.BatchRequest,
        traceparent: Annotated[str | None, Header(max_length=128)] = None,
        tracestate: Annotated[str | None, Header(max_length=512)] = None,
    ) -> models.BatchResponse:
        """Publish many events, in order; each item succeeds or fails on its own."""
        results = []
        for index, item in enumerate(body.items):
            try:
                _check_room(item.room)
                published = await _publish(
                    node, item.room, item.data, item.id, traceparent, tracestate
                )
                results.append(models.BatchResult(index=index, result=published))
            except ApiProblem as problem:
                error = models.ApiError(code=problem.code, message=problem.message)
                results.append(models.BatchResult(index=index, error=error))
        return models.BatchResponse(results=results)

    @router.get(
        "/rooms/{room:path}/history",
        response_model=models.HistoryPage,
        tags=["history"],
        responses={409: {"model": models.ApiError, "description": "`epoch_mismatch`"}},
    )
    async def history(
        room: RoomParam,
        since: Annotated[int | None, Query(ge=0, description="Events after this offset")] = None,
        epoch: Annotated[str | None, Query(max_length=64, description="since's epoch")] = None,
        limit: Annotated[int, Query(ge=1, le=models.MAX_HISTORY_PAGE)] = 100,
        reverse: bool = False,
        cursor: Annotated[str | None, Query(max_length=200)] = None,
    ) -> models.HistoryPage:
        """A page of a durable room's stored events, oldest first (`reverse`: newest
        first). Pass the answer's `cursor` for the next page."""
        _check_room(room)
        policy = node.services.policies.for_room(room)
        if not policy.durable:
            raise ApiProblem(400, "not_durable", f"room {room} is volatile: it has no history")
        if cursor is not None:
            reverse, epoch, since = _parse_cursor(cursor)
        return await _history_page(node, room, since, epoch, limit, reverse)

    @router.get(
        "/rooms/{room:path}/presence/stats", response_model=models.PresenceStats, tags=["presence"]
    )
    async def presence_stats(room: RoomParam) -> models.PresenceStats:
        """How many connections and distinct subjects are in a presence room."""
        _check_presence(node, room)
        count, subjects = await _broker_call(node.presence.stats(room))
        return models.PresenceStats(room=room, count=count, subjects=subjects)

    @router.get(
        "/rooms/{room:path}/presence", response_model=models.PresenceList, tags=["presence"]
    )
    async def presence(room: RoomParam) -> models.PresenceList:
        """Members of a presence room across every relay server (counts only past
        RELAY_PRESENCE_MAX_MEMBERS)."""
        _check_presence(node, room)
        count, listed = await _broker_call(node.presence.members(room))
        members = None if listed is None else [models.Member(**m) for m in listed]
        return models.PresenceList(room=room, count=count, members=members)

    @router.get("/rooms", response_model=models.RoomList, tags=["cluster"])
    async def rooms(
        match: Annotated[str, Query(min_length=1, max_length=128, description="glob")] = "*",
        cursor: Annotated[str | None, Query(max_length=128)] = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    ) -> models.RoomList:
        """Rooms with members on live relay servers (as of their last load report)."""
        counts = await _broker_call(node.cluster.rooms())
        names = sorted(
            r for r in counts if fnmatch.fnmatchcase(r, match) and (cursor is None or r > cursor)
        )
        page = names[:limit]
        return models.RoomList(
            rooms=[models.RoomInfo(room=r, members=counts[r]) for r in page],
            cursor=page[-1] if len(names) > limit else None,
        )

    @router.get("/nodes", response_model=models.NodeList, tags=["cluster"])
    async def nodes() -> models.NodeList:
        """Relay servers alive (their load reports), with connections, rooms and version."""
        reports = await _broker_call(node.cluster.nodes())
        return models.NodeList(
            nodes=[
                models.NodeInfo(
                    node=r.node, connections=r.connections, rooms=r.rooms, version=r.version
                )
                for r in reports
            ]
        )

    @router.get("/shards", response_model=models.ShardMapInfo, tags=["cluster"])
    async def shards() -> models.ShardMapInfo:
        """The active shard map (version, shard names) and the phase of a switch."""
        try:
            state = await _broker_call(node.shard_map())
        except ShardMapError as exc:
            raise ApiProblem(400, "bad_request", str(exc)) from exc
        return models.ShardMapInfo(**state.describe())

    @router.post("/shards/switch", response_model=models.ShardMapInfo, tags=["cluster"])
    async def switch_shards(body: models.ShardSwitch) -> models.ShardMapInfo:
        """Start switching every relay server to these shards; the answer is the map
        with the switch started (`phase: prepare`), or unchanged when it already is
        this list. Poll GET /shards until `phase` is `stable` again."""
        try:
            state = await _broker_call(node.switch_shards(body.shards, body.timeout))
        except ShardMapError as exc:
            raise ApiProblem(400, "bad_request", str(exc)) from exc
        return models.ShardMapInfo(**state.describe())

    @router.post("/subjects/{sub}/disconnect", response_model=models.Accepted, tags=["subjects"])
    async def disconnect(
        sub: Annotated[str, PathParam(min_length=1, max_length=256)],
        body: models.Disconnect | None = None,
    ) -> models.Accepted:
        """Close every connection of a token subject on every relay server: they get
        `disconnect` (reconnect: false), then close code 4003."""
        reason = body.reason if body is not None else models.Disconnect().reason
        await _broker_call(node.disconnect(sub, reason))
        return models.Accepted(subject=sub, reason=reason)

    @router.post(
        "/subjects/{sub}/rooms/{room:path}/leave", response_model=models.Accepted, tags=["subjects"]
    )
    async def leave(
        sub: Annotated[str, PathParam(min_length=1, max_length=256)], room: RoomParam
    ) -> models.Accepted:
        """Remove a subject's connections from a room on every relay server: they get
        `left` with reason `removed` (they may join again if their token allows)."""
        _check_room(room)
        await _broker_call(node.remove(sub, room))
        return models.Accepted(subject=sub, room=room)

    return router


async def _publish(
    node: RelayNode,
    room: str,
    data: Any,
    msg_id: str | None,
    traceparent: str | None,
    tracestate: str | None,
) -> models.Published:
    if msg_id is not None and not 0 < len(msg_id) <= protocol.MAX_ID_CHARS:
        raise ApiProblem(
            400, "bad_request", f"'id' must be 1 to {protocol.MAX_ID_CHARS} characters"
        )
    message = protocol.Publish(room, data, msg_id, None, traceparent, tracestate)
    try:
        with tracing.publishing(message, "api") as traced:
            result = await node.broker.publish(
                room,
                data,
                ts=time.time_ns() // 1_000_000,
                policy=node.services.policies.for_room(room),
                msg_id=msg_id,
                subject=None,
                trace=traced.context,
            )
            traced.sent(result.offset)
    except NotReplicated as exc:
        node.metrics.unreplicated.inc()
        raise ApiProblem(503, "unavailable", protocol.not_replicated(msg_id)) from exc
    except BrokerUnavailable as exc:
        raise ApiProblem(503, "unavailable", exc.client_message) from exc
    except ProtocolError as exc:
        raise ApiProblem(400, "bad_request", exc.message) from exc
    if not result.duplicate:
        node.metrics.published.inc()
    return models.Published(
        room=room, offset=result.offset, epoch=result.epoch, duplicate=result.duplicate
    )


async def _history_page(
    node: RelayNode, room: str, since: int | None, epoch: str | None, limit: int, reverse: bool
) -> models.HistoryPage:
    policy = node.services.policies.for_room(room)
    if reverse:
        before = since  # for a reverse page, `since` is the offset to stay below
        head = await _broker_call(node.broker.history(room, None, policy))
        upper = head.top + 1 if before is None else min(before, head.top + 1)
        found = await _broker_call(node.broker.history(room, max(0, upper - 1 - limit), policy))
        entries = [d for d in reversed(found.entries) if (d.offset or 0) < upper][:limit]
        more = bool(entries) and (entries[-1].offset or 0) > 1
    else:
        found = await _broker_call(node.broker.history(room, since or 0, policy))
        entries = found.entries[:limit]
        more = bool(entries) and (entries[-1].offset or 0) < found.top
    if epoch is not None and epoch != found.epoch:
        raise ApiProblem(
            409,
            "epoch_mismatch",
            f"epoch {epoch!r} is not the room's ({found.epoch!r}): its "
            "history was reset; read it again from the start",
        )
    events = [_history_event(d.payload) for d in entries]
    cursor = None
    if more:
        cursor = f"{'r' if reverse else 'f'}:{found.epoch}:{entries[-1].offset}"
    return models.HistoryPage(
        room=room, epoch=found.epoch, top=found.top, events=events, cursor=cursor
    )


def _history_event(payload: bytes) -> models.HistoryEvent:
    event = orjson.loads(payload)
    return models.HistoryEvent(
        offset=event["offset"], ts=event["ts"], data=event["data"], sender=event.get("from")
    )


def _parse_cursor(cursor: str) -> tuple[bool, str, int]:
    direction, _, rest = cursor.partition(":")
    epoch, _, offset = rest.rpartition(":")
    if direction not in ("f", "r") or not epoch or not offset.isdigit():
        raise ApiProblem(400, "bad_request", "'cursor' is not one this API handed out")
    return direction == "r", epoch, int(offset)


def _check_room(room: str) -> None:
    if not _ROOM.fullmatch(room):
        raise ApiProblem(
            400, "bad_request", "bad room name: 1 to 128 characters of A-Z a-z 0-9 _ - . : /"
        )


def _check_presence(node: RelayNode, room: str) -> None:
    _check_room(room)
    if not node.services.policies.for_room(room).presence:
        raise ApiProblem(400, "bad_request", f"room {room} has no presence (RELAY_ROOMS)")


async def _broker_call(call: Awaitable[T]) -> T:
    try:
        return await call
    except BrokerUnavailable as exc:
        raise ApiProblem(503, "unavailable", exc.client_message) from exc


def _add_error_handlers(app: FastAPI) -> None:
    # Each handler is registered for one exception class; the isinstance checks only
    # narrow the type Starlette's signature gives them.
    async def problem(request: Request, exc: Exception) -> Response:
        if not isinstance(exc, ApiProblem):
            return await crashed(request, exc)
        return exc.response()

    async def invalid(request: Request, exc: Exception) -> Response:
        if not isinstance(exc, RequestValidationError):
            return await crashed(request, exc)
        parts = []
        for error in exc.errors()[:5]:
            where = ".".join(str(p) for p in error.get("loc", ()))
            parts.append(f"{where}: {error.get('msg', 'invalid')}")
        return ApiProblem(400, "bad_request", "; ".join(parts) or "invalid request").response()

    async def http_error(request: Request, exc: Exception) -> Response:
        if not isinstance(exc, HTTPException):
            return await crashed(request, exc)
        if isinstance(exc.__cause__, ApiProblem):
            return exc.__cause__.response()
        code = _STATUS_CODES.get(
            exc.status_code, "bad_request" if exc.status_code < 500 else "internal"
        )
        return ApiProblem(exc.status_code, code, str(exc.detail)).response()

    async def crashed(request: Request, exc: Exception) -> Response:
        correlation = secrets.token_hex(6)
        log.error(
            "internal error %s on %s %s",
            correlation,
            request.method,
            request.url.path,
            exc_info=exc,
        )
        return ApiProblem(500, "internal", f"internal error {correlation}").response()

    app.add_exception_handler(ApiProblem, problem)
    app.add_exception_handler(RequestValidationError, invalid)
    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(Exception, crashed)


class BodyLimit:
    """Refuses request bodies over `limit` bytes with 413, declared or streamed."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        too_large = ApiProblem(413, "too_large", f"request body over {self.limit} bytes")
        if declared is not None and (not declared.isdigit() or int(declared) > self.limit):
            await too_large.response()(scope, receive, send)
            return
        seen = 0

        async def bounded() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise too_large
            return message

        await self.app(scope, bounded, send)
