"""kopf, for real, against kmock's in-memory Kubernetes emulator.

What the emulator does and does not do (read from kmock 0.8's source) decides what these
tests can prove:

- It stores objects, serves GET/LIST/WATCH, POST creates, PATCH merges (dicts recursively,
  lists replaced), DELETE deletes. Watch streams carry ADDED/MODIFIED/DELETED.
- It has no server-side apply: an ``application/apply-patch+yaml`` PATCH is merged like any
  other, and a PATCH of a missing object is 404, so an SSA create would fail. ``SSAEmulator``
  below adds exactly one thing, on the test side: an apply-patch of a missing object creates
  it. The operator's real SSA client code runs unchanged; what is not emulated (field
  ownership, removal of fields a manager stopped applying, conflicts, list-map merging) is
  proven only on a real API server.
- It fills in no uid/generation/resourceVersion, applies no CRD defaults or validation, keeps
  status and spec in one object, and runs no controllers: no pods, no Deployment status,
  no garbage collection. Tests set uid and generation themselves and play the Deployment and
  StatefulSet controllers by writing child status through the API.
"""

import asyncio
import contextlib
import importlib.resources
import pathlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import attrs
import kmock
import pytest
from prometheus_client import generate_latest

from gamecluster import names
from gamecluster.children import Owner
from gamecluster.load import Reading, ReadyPod, RedisAuth
from gamecluster.metrics import OperatorMetrics
from gamecluster.shards import MapReading
from support.metrics import metric_value

NAMESPACE = "games"
RELAY_IMAGE = "registry.local/gamecluster:test"
APPLY_CONTENT_TYPE = "application/apply-patch+yaml"


class SSAEmulator(kmock.KubernetesEmulator):
    """kmock's emulator plus create-on-apply (see the module docstring for what is not emulated)."""

    async def _handle(self, request: kmock.Request) -> Any:
        is_apply = request.headers.get("Content-Type", "").startswith(APPLY_CONTENT_TYPE)
        if request.action == kmock.action.UPDATE and is_apply and request.resource is not None:
            key = (request.resource, request.namespace, request.name)
            if key not in self.objects or self.objects[key].deleted:
                creating = attrs.evolve(request, action=kmock.action.CREATE)
                # kmock matches reactions to requests by identity in its request log.
                log = self._requests
                log[next(i for i, r in enumerate(log) if r is request)] = creating
                request = creating
        return await super()._handle(request)


@dataclass
class FakeLoad:
    """Stands in for the relay pods' load reports (the Redis reader is tested elsewhere).

    ``connections`` None: the load is unknown. ``per_pod`` when set: the per-pod counts."""

    connections: int | None = None
    per_pod: dict[str, int] | None = None
    calls: list[tuple[str | None, tuple[str, ...]]] = field(default_factory=list)
    auths: list[RedisAuth | None] = field(default_factory=list)

    def read(
        self,
        redis_url: str | None,
        pods: Sequence[ReadyPod],
        now: datetime,
        auth: RedisAuth | None = None,
    ) -> Reading:
        self.calls.append((redis_url, tuple(p.name for p in pods)))
        self.auths.append(auth)
        if self.per_pod is not None:
            return Reading(dict(self.per_pod))
        if self.connections is None:
            return Reading(unknown="no fresh load report from ready pod fake")
        return Reading({"fake": self.connections})


class FakeRelayAdmin:
    """Stands in for the relays' server API (``gamecluster.relay_admin``; the real client is
    tested against real relays in tests/integration/test_operator_shard_switch.py): a switch
    starts in ``prepare`` and ends when the test calls ``finish``."""

    def __init__(self) -> None:
        self.map = MapReading(version=1, shards=(), phase="stable")
        self.next: tuple[str, ...] = ()
        self.calls: list[tuple[str, tuple[str, ...]]] = []

    def shards(self, owner: Owner, api_key: str) -> MapReading:
        self.calls.append(("GET", ()))
        return self.map

    def switch(
        self, owner: Owner, api_key: str, shards: Sequence[str], timeout: float
    ) -> MapReading:
        self.calls.append(("POST", tuple(shards)))
        if tuple(shards) != self.map.shards and self.map.phase == "stable":
            self.next = tuple(shards)
            self.map = MapReading(self.map.version, self.map.shards, "prepare")
        return self.map

    def finish(self, *, abort: str | None = None) -> None:
        """The switch ends: done, or aborted with the relays' reason (the old map stays)."""
        if abort is not None:
            self.map = MapReading(self.map.version, self.map.shards, "stable", last=abort)
        else:
            self.map = MapReading(self.map.version + 1, self.next, "stable")

    def posts(self) -> list[tuple[str, ...]]:
        return [shards for method, shards in self.calls if method == "POST"]


@dataclass
class OperatorClock:
    """The reconciler's clock: wall time plus ``ahead``, which a test moves on to pass a
    wait of the operator's own (a switch's backoff) without sleeping through it."""

    ahead: timedelta = timedelta(0)

    def __call__(self) -> datetime:
        return datetime.now(UTC) + self.ahead


def declare_resources(emulator: kmock.KubernetesEmulator) -> None:
    # The bundled built-in resources (what load_bundled() reads, minus its deprecated API).
    bundled = importlib.resources.files("kmock._internal") / "resources.json.gz"
    emulator.resources.load_path(pathlib.Path(str(bundled)))
    emulator.resources[f"{names.GROUP}/{names.VERSION}/{names.PLURAL}"] = kmock.ResourceInfo(
        kind=names.KIND,
        singular="gamecluster",
        namespaced=True,
        verbs={"get", "list", "watch", "create", "patch", "delete"},
        shortnames={"gc"},
        categories={"games"},
        subresources={"status", "scale"},
    )


@dataclass
class Harness:
    """The emulator, a way to talk to it as a user or a controller would, and the operator."""

    emulator: kmock.KubernetesEmulator
    load: FakeLoad
    metrics: OperatorMetrics = field(default_factory=OperatorMetrics)
    """The running operator's own metrics (handlers.Context.metrics)."""
    relay_admin: FakeRelayAdmin = field(default_factory=FakeRelayAdmin)
    """The relays' server API as the operator's reconciler sees it."""
    clock: OperatorClock = field(default_factory=OperatorClock)
    """The reconciler's clock."""

    def metric(self, name: str, **labels: str) -> float:
        """One sample of the operator's /metrics exposition, parsed as Prometheus would;
        0 for a labelled counter not incremented yet (absent until its first inc())."""
        text = generate_latest(self.metrics.registry).decode()
        try:
            return metric_value(text, name, labels)
        except KeyError:
            if not labels:
                raise
            return 0.0

    def objects(self, resource: str, name: str) -> dict[str, Any] | None:
        *group, version, plural = resource.split("/")
        parsed = kmock.resource(group="/".join(group), version=version, plural=plural)
        key = (parsed, NAMESPACE, name)
        if key not in self.emulator.objects or self.emulator.objects[key].deleted:
            return None
        return dict(self.emulator.objects[key].raw)

    async def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        content_type: str = "application/merge-patch+json",
    ) -> Any:
        async with self.emulator.request(
            method, path, json=body, headers={"Content-Type": content_type}
        ) as response:
            assert response.status < 400, (method, path, response.status, await response.text())
            return await response.json()

    async def create_gamecluster(
        self,
        name: str,
        spec: dict[str, Any],
        uid: str = "uid-1",
        annotations: dict[str, str] | None = None,
    ) -> None:
        body = {
            "apiVersion": names.API_VERSION,
            "kind": names.KIND,
            "metadata": {
                "name": name,
                "namespace": NAMESPACE,
                "uid": uid,
                "generation": 1,
                # kmock keeps no resourceVersion; kopf guards its JSON patches with one.
                "resourceVersion": "1",
                "annotations": annotations or {},
            },
            "spec": spec,
        }
        await self.request(
            "POST",
            f"/apis/{names.API_VERSION}/namespaces/{NAMESPACE}/{names.PLURAL}",
            body,
            "application/json",
        )

    async def patch(self, path: str, body: dict[str, Any]) -> None:
        await self.request("PATCH", path, body)

    async def eventually(
        self, check: Callable[[], Any], within: float = 10.0, what: str = ""
    ) -> Any:
        """Poll ``check`` until it returns something truthy (the operator acts asynchronously)."""
        deadline = asyncio.get_running_loop().time() + within
        last: Any = None
        while asyncio.get_running_loop().time() < deadline:
            with contextlib.suppress(KeyError, TypeError, IndexError):
                last = check()
                if last:
                    return last
            await asyncio.sleep(0.05)
        pytest.fail(f"timed out waiting for {what or check}; last value: {last!r}")

    def gamecluster(self, name: str) -> dict[str, Any] | None:
        return self.objects(f"{names.GROUP}/{names.VERSION}/{names.PLURAL}", name)


def gc_path(name: str) -> str:
    return f"/apis/{names.API_VERSION}/namespaces/{NAMESPACE}/{names.PLURAL}/{name}"
