"""A typed Python client of the server API (docs/api.md), async and sync.

    async with AsyncRelayApi("http://relay-admin:9090", api_key=KEY) as api:
        published = await api.publish("match:1", {"move": "e2e4"}, id="move-1")

    with RelayApi("http://relay-admin:9090", api_key=KEY) as api:
        page = api.history("match:1", limit=50)

Every non-2xx answer raises `ApiCallError` with the API's error `code` and `message`.
Both clients build their requests with the same functions (`_Call`), so they cannot
drift apart; only the transport differs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Generic, TypeVar
from urllib.parse import quote

import httpx
from pydantic import BaseModel, ValidationError

from relay.api import models
from relay.contract import API_KEY_HEADER, API_PREFIX

M = TypeVar("M", bound=BaseModel)
PREFIX = API_PREFIX


class ApiCallError(Exception):
    """The API answered with an error (`status`, `code`, `message`)."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"HTTP {status} {code}: {message}")
        self.status, self.code, self.message = status, code, message


@dataclass(frozen=True)
class _Call(Generic[M]):
    method: str
    path: str
    answer: type[M]
    json: Any = None
    params: dict[str, Any] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)

    def parse(self, response: httpx.Response) -> M:
        if response.is_success:
            return self.answer.model_validate_json(response.content)
        try:
            error = models.ApiError.model_validate_json(response.content)
        except ValidationError:
            raise ApiCallError(response.status_code, "internal", response.text[:200]) from None
        raise ApiCallError(response.status_code, error.code, error.message)


def _room(room: str) -> str:
    return quote(room, safe="/:")


def _headers(api_key: str | None, token: str | None) -> dict[str, str]:
    if api_key is not None:
        return {API_KEY_HEADER: api_key}
    if token is not None:
        return {"Authorization": f"Bearer {token}"}
    return {}


class _Calls:
    """The API's calls as data; the two clients below only send them."""

    @staticmethod
    def publish(
        room: str, data: Any, id: str | None, traceparent: str | None
    ) -> _Call[models.Published]:
        body: dict[str, Any] = {"data": data} | ({"id": id} if id is not None else {})
        headers = {"traceparent": traceparent} if traceparent else {}
        return _Call(
            "POST", f"/rooms/{_room(room)}/events", models.Published, body, headers=headers
        )

    @staticmethod
    def publish_batch(items: list[models.BatchItem]) -> _Call[models.BatchResponse]:
        body = {"items": [item.model_dump(exclude_none=True) for item in items]}
        return _Call("POST", "/publish", models.BatchResponse, body)

    @staticmethod
    def history(
        room: str,
        since: int | None,
        epoch: str | None,
        limit: int,
        reverse: bool,
        cursor: str | None,
    ) -> _Call[models.HistoryPage]:
        params: dict[str, Any] = {"limit": limit, "reverse": str(reverse).lower()}
        for key, value in (("since", since), ("epoch", epoch), ("cursor", cursor)):
            if value is not None:
                params[key] = value
        return _Call("GET", f"/rooms/{_room(room)}/history", models.HistoryPage, params=params)

    @staticmethod
    def presence(room: str) -> _Call[models.PresenceList]:
        return _Call("GET", f"/rooms/{_room(room)}/presence", models.PresenceList)

    @staticmethod
    def presence_stats(room: str) -> _Call[models.PresenceStats]:
        return _Call("GET", f"/rooms/{_room(room)}/presence/stats", models.PresenceStats)

    @staticmethod
    def disconnect(subject: str, reason: str) -> _Call[models.Accepted]:
        path = f"/subjects/{quote(subject, safe='')}/disconnect"
        return _Call("POST", path, models.Accepted, {"reason": reason})

    @staticmethod
    def remove(subject: str, room: str) -> _Call[models.Accepted]:
        path = f"/subjects/{quote(subject, safe='')}/rooms/{_room(room)}/leave"
        return _Call("POST", path, models.Accepted)

    @staticmethod
    def rooms(match: str, cursor: str | None) -> _Call[models.RoomList]:
        params = {"match": match} | ({"cursor": cursor} if cursor is not None else {})
        return _Call("GET", "/rooms", models.RoomList, params=params)

    @staticmethod
    def nodes() -> _Call[models.NodeList]:
        return _Call("GET", "/nodes", models.NodeList)

    @staticmethod
    def shards() -> _Call[models.ShardMapInfo]:
        return _Call("GET", "/shards", models.ShardMapInfo)

    @staticmethod
    def switch_shards(shards: list[str], timeout: float) -> _Call[models.ShardMapInfo]:
        body = {"shards": shards, "timeout": timeout}
        return _Call("POST", "/shards/switch", models.ShardMapInfo, body)


class AsyncRelayApi:
    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None = None,
        token: str | None = None,
        timeout: float = 10.0,
    ) -> None:
        self._http = httpx.AsyncClient(
            base_url=base_url.rstrip("/") + PREFIX,
            headers=_headers(api_key, token),
            timeout=timeout,
        )

    async def __aenter__(self) -> AsyncRelayApi:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        await self._http.aclose()

    async def _send(self, call: _Call[M]) -> M:
        response = await self._http.request(
            call.method, call.path, json=call.json, params=call.params, headers=call.headers
        )
        return call.parse(response)

    async def publish(
        self, room: str, data: Any, *, id: str | None = None, traceparent: str | None = None
    ) -> models.Published:
        return await self._send(_Calls.publish(room, data, id, traceparent))

    async def publish_batch(self, items: list[models.BatchItem]) -> models.BatchResponse:
        return await self._send(_Calls.publish_batch(items))

    async def history(
        self,
        room: str,
        *,
        since: int | None = None,
        epoch: str | None = None,
        limit: int = 100,
        reverse: bool = False,
        cursor: str | None = None,
    ) -> models.HistoryPage:
        return await self._send(_Calls.history(room, since, epoch, limit, reverse, cursor))

    async def presence(self, room: str) -> models.PresenceList:
        return await self._send(_Calls.presence(room))

    async def presence_stats(self, room: str) -> models.PresenceStats:
        return await self._send(_Calls.presence_stats(room))

    async def disconnect(self, subject: str, reason: str = "disconnected") -> models.Accepted:
        return await self._send(_Calls.disconnect(subject, reason))

    async def remove(self, subject: str, room: str) -> models.Accepted:
        return await self._send(_Calls.remove(subject, room))

    async def rooms(self, match: str = "*", cursor: str | None = None) -> models.RoomList:
        return await self._send(_Calls.rooms(match, cursor))

    async def nodes(self) -> models.NodeList:
        return await self._send(_Calls.nodes())

    async def shards(self) -> models.ShardMapInfo:
        return await self._send(_Calls.shards())

    async def switch_shards(self, shards: list[str], timeout: float = 30.0) -> models.ShardMapInfo:
        return await self._send(_Calls.switch_shards(shards, timeout))


class RelayApi:
    """The blocking twin of AsyncRelayApi (scripts, the CLI)."""

    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None = None,
        token: str | None = None,
        timeout: float = 10.0,
    ) -> None:
        self._http = httpx.Client(
            base_url=base_url.rstrip("/") + PREFIX,
            headers=_headers(api_key, token),
            timeout=timeout,
        )

    def __enter__(self) -> RelayApi:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _send(self, call: _Call[M]) -> M:
        response = self._http.request(
            call.method, call.path, json=call.json, params=call.params, headers=call.headers
        )
        return call.parse(response)

    def publish(
        self, room: str, data: Any, *, id: str | None = None, traceparent: str | None = None
    ) -> models.Published:
        return self._send(_Calls.publish(room, data, id, traceparent))

    def publish_batch(self, items: list[models.BatchItem]) -> models.BatchResponse:
        return self._send(_Calls.publish_batch(items))

    def history(
        self,
        room: str,
        *,
        since: int | None = None,
        epoch: str | None = None,
        limit: int = 100,
        reverse: bool = False,
        cursor: str | None = None,
    ) -> models.HistoryPage:
        return self._send(_Calls.history(room, since, epoch, limit, reverse, cursor))

    def presence(self, room: str) -> models.PresenceList:
        return self._send(_Calls.presence(room))

    def presence_stats(self, room: str) -> models.PresenceStats:
        return self._send(_Calls.presence_stats(room))

    def disconnect(self, subject: str, reason: str = "disconnected") -> models.Accepted:
        return self._send(_Calls.disconnect(subject, reason))

    def remove(self, subject: str, room: str) -> models.Accepted:
        return self._send(_Calls.remove(subject, room))

    def rooms(self, match: str = "*", cursor: str | None = None) -> models.RoomList:
        return self._send(_Calls.rooms(match, cursor))

    def nodes(self) -> models.NodeList:
        return self._send(_Calls.nodes())

    def shards(self) -> models.ShardMapInfo:
        return self._send(_Calls.shards())

    def switch_shards(self, shards: list[str], timeout: float = 30.0) -> models.ShardMapInfo:
        return self._send(_Calls.switch_shards(shards, timeout))
