"""The operator's calls to a GameCluster's relays: read and switch the active shard map.

Through the ``<name>-admin`` Service (the relays' admin port, which no NetworkPolicy of the
GameCluster closes; the operator's egress is open), with the server API key from the
generated ``<name>-api`` Secret. The key is sent as a header and never logged; errors carry
the status and the relay's ``message``, not the request.

The operator imports nothing of the relay but ``relay.contract``, so this is a small
HTTP client of its own over the two routes it needs (docs/api.md, "shards").
"""

from collections.abc import Callable, Sequence
from typing import Final, Protocol

import httpx

from gamecluster.children import Owner
from gamecluster.shards import MapReading
from relay import contract

TIMEOUT_SECONDS: Final = 5.0
"""A reconcile pass holds its GameCluster's lock: an unreachable relay must not hold it long."""


class RelayAdminError(Exception):
    """A relay could not be asked (unreachable, refused, an unexpected answer)."""

    def __init__(self, message: str, status: int = 0, *, sent: bool = True) -> None:
        super().__init__(message)
        self.status = status
        """The relay's HTTP status; 0 when none came (a timeout: the request may have
        been carried out)."""
        self.sent = sent
        """False when no connection was made (a name that does not resolve, a refused or
        timed-out connect, no relay pod at all): nothing can have been carried out."""

    @property
    def refused(self) -> bool:
        """Nothing was done: the request never left, or the relay answered a 4xx other
        than "a switch is in progress" (docs/api.md: a running switch is a 400 too, and
        may be the one asked for)."""
        if not self.sent:
            return True
        return 400 <= self.status < 500 and "in progress" not in str(self)


class RelayAdmin(Protocol):
    def shards(self, owner: Owner, api_key: str) -> MapReading: ...

    def switch(
        self, owner: Owner, api_key: str, shards: Sequence[str], timeout: float
    ) -> MapReading: ...


def in_cluster_url(owner: Owner) -> str:
    """The admin Service's server API, by its cluster DNS name."""
    return (
        f"http://{owner.admin_service}.{owner.namespace}.svc:{contract.DEFAULT_ADMIN_PORT}"
        f"{contract.API_PREFIX}"
    )


class HttpRelayAdmin:
    """``RelayAdmin`` over HTTP; ``base_url`` maps a GameCluster to its server API (tests
    point it at a local relay)."""

    def __init__(self, base_url: Callable[[Owner], str] = in_cluster_url) -> None:
        self._base_url = base_url

    def _call(
        self, owner: Owner, api_key: str, method: str, path: str, body: object = None
    ) -> MapReading:
        url = f"{self._base_url(owner)}{path}"
        try:
            response = httpx.request(
                method,
                url,
                json=body,
                headers={contract.API_KEY_HEADER: api_key},
                timeout=TIMEOUT_SECONDS,
            )
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            # Before anything was sent: the relays cannot have acted on it.
            reason = f"{method} {url}: {type(exc).__name__}: {exc}"
            raise RelayAdminError(reason, sent=False) from exc
        except httpx.HTTPError as exc:
            raise RelayAdminError(f"{method} {url}: {type(exc).__name__}: {exc}") from exc
        if response.status_code != 200:
            detail = response.text[:300]
            raise RelayAdminError(
                f"{method} {url}: HTTP {response.status_code}: {detail}", response.status_code
            )
        try:
            return MapReading.from_json(response.json())
        except (ValueError, KeyError, TypeError) as exc:
            raise RelayAdminError(f"{method} {url}: unexpected answer: {exc}") from exc

    def shards(self, owner: Owner, api_key: str) -> MapReading:
        return self._call(owner, api_key, "GET", "/shards")

    def switch(
        self, owner: Owner, api_key: str, shards: Sequence[str], timeout: float
    ) -> MapReading:
        body = {"shards": list(shards), "timeout": timeout}
        return self._call(owner, api_key, "POST", "/shards/switch", body)
