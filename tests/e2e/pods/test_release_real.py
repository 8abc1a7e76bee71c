"""`helm install` on a real node: the chart's operator Deployment runs in a pod (in-cluster config
through the `kubernetes` Service and kube-proxy, its ServiceAccount and RBAC, its probes), the
demo GameCluster's Redis and relay pods run and pass their real probes (relays find Redis by
its DNS name through CoreDNS), and `helm test` runs its pod and passes (issue 11).

One release for the module (demo enabled, so `helm test` has its GameCluster); tests run in
file order.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import helm_python as helm
import pytest

from gamecluster_client import (
    Backoff,
    Client,
    Event,
    Lost,
    Recovered,
    Room,
    RoomMessage,
    UnavailableError,
)
from gamecluster_client import Connection as RelayClient
from relay.broker.shardmap import ShardMap
from support import tls

from ..cluster import Cluster, E2EError, Jaeger, wait_until
from ..release import CHART_DIR, OPERATOR_COMPONENT, RELEASE
from ..traces import PROCESS, PUBLISH, room_spans
from . import images
from . import node as node_mod
from .conftest import RealCluster

pytestmark = pytest.mark.pods

GC = "gameclusters.gamecluster.io"
DEMO_RELAYS = "app.kubernetes.io/instance=demo,app.kubernetes.io/component=relay"
READY_TIMEOUT = 240.0  # image already imported; Python start-up on 2 busy cores


class Installed:
    def __init__(self, cluster: Cluster, namespace: str, config: helm.Config) -> None:
        self.cluster, self.namespace, self.helm = cluster, namespace, config
        self.uninstalled = False


@pytest.fixture(scope="module")
def installed(real_cluster: RealCluster) -> Iterator[Installed]:
    cluster = real_cluster.cluster
    with (
        cluster.namespace("gc-real") as ns,
        helm.Config(kubeconfig_path=cluster.kubeconfig, namespace=ns) as config,
        helm.Chart.load(CHART_DIR) as chart,
    ):
        values = {"image": {"pullPolicy": "Never"}, "demo": {"enabled": True}}
        try:
            config.install(chart, RELEASE, values, namespace=ns, wait="watcher", timeout=300)
        except helm.HelmError as err:
            raise E2EError(f"helm install failed: {err}\n{diagnose(cluster, ns)}") from err
        inst = Installed(cluster, ns, config)
        try:
            yield inst
        finally:
            if not inst.uninstalled:
                config.uninstall(RELEASE, ignore_not_found=True, wait="watcher", timeout=120)


def diagnose(cluster: Cluster, ns: str) -> str:
    """Pods, their events and logs: what a failed wait needs to be understood."""
    out = [cluster.kubectl("get", "pods", "-n", ns, "-o", "wide", check=False).stdout]
    out.append(cluster.kubectl("get", "events", "-n", ns, check=False).stdout[-3000:])
    for pod in cluster.get_json("pods", "-n", ns)["items"]:
        name = pod["metadata"]["name"]
        logs = cluster.kubectl("logs", "-n", ns, name, "--tail=30", check=False)
        out.append(f"--- {name}:\n{logs.stdout}{logs.stderr}")
    if cluster.processes is not None:
        out.append(cluster.processes.tails(15))
    return "\n".join(out)


def pods(cluster: Cluster, ns: str, selector: str) -> list[dict[str, Any]]:
    return list(cluster.get_json("pods", "-n", ns, "-l", selector)["items"])


def ready(pod: dict[str, Any]) -> bool:
    conds = {c["type"]: c["status"] for c in pod.get("status", {}).get("conditions") or []}
    return pod.get("status", {}).get("phase") == "Running" and conds.get("Ready") == "True"


def wait_pods_ready(
    inst: Installed, selector: str, count: int, what: str, ns: str | None = None
) -> list[dict[str, Any]]:
    """Exactly `count` pods of `selector`, all Running and Ready (in `ns`, else the release's)."""
    ns = ns or inst.namespace

    def probe() -> list[dict[str, Any]] | None:
        found = pods(inst.cluster, ns, selector)
        return found if len(found) == count and all(ready(p) for p in found) else None

    try:
        return inst.cluster.wait_for(what, probe, timeout=READY_TIMEOUT)
    except E2EError as err:
        raise E2EError(f"{err}\n{diagnose(inst.cluster, ns)}") from None


OPERATOR_REPLICAS = 2
"""The chart's default operator.replicas: one leads through a Lease, one stands by."""


def lease_holder(inst: Installed, candidates: list[str]) -> str | None:
    """The operator pod that holds the chart's leader Lease, if one of `candidates` does."""
    leases = inst.cluster.get_json("leases", "-n", inst.namespace)["items"]
    holders = [(lease.get("spec") or {}).get("holderIdentity") for lease in leases]
    held = [h for h in holders if h in candidates]
    return held[0] if len(held) == 1 else None


@pytest.mark.timeout(3600)  # may be the first test of the session: images and node first
def test_operator_pod_runs_in_cluster_on_the_real_node(installed: Installed) -> None:
    operators = wait_pods_ready(
        installed,
        f"app.kubernetes.io/instance={RELEASE},{OPERATOR_COMPONENT}",
        OPERATOR_REPLICAS,
        "operator pods",
    )
    names = [pod["metadata"]["name"] for pod in operators]
    for pod in operators:
        assert pod["spec"]["nodeName"] == node_mod.NODE_NAME
        [status] = pod["status"]["containerStatuses"]
        assert status["image"].endswith(images.PROJECT_IMAGE.rsplit("/", 1)[-1])
        assert status["restartCount"] == 0
        # In-cluster: the ServiceAccount token is mounted and the API is the `kubernetes`
        # Service.
        env = installed.cluster.kubectl(
            "exec", "-n", installed.namespace, pod["metadata"]["name"], "--", "env"
        ).stdout
        assert "KUBERNETES_SERVICE_HOST=10.96.0.1" in env
    # Exactly one of them leads: it holds the Lease (the other answers probes, standing by).
    installed.cluster.wait_for(
        "one operator pod holding the leader Lease",
        lambda: lease_holder(installed, names),
        timeout=READY_TIMEOUT,
    )


@pytest.mark.timeout(900)
def test_demo_redis_and_relays_ready_through_their_probes(installed: Installed) -> None:
    redis = wait_pods_ready(
        installed, "app.kubernetes.io/instance=demo,app.kubernetes.io/component=redis", 1, "redis"
    )
    relays = wait_pods_ready(
        installed, "app.kubernetes.io/instance=demo,app.kubernetes.io/component=relay", 2, "relays"
    )
    for pod in [*redis, *relays]:
        assert pod["spec"]["nodeName"] == node_mod.NODE_NAME
        assert all(s["restartCount"] == 0 for s in pod["status"]["containerStatuses"])

    def gc_ready() -> dict[str, Any] | None:
        gc: dict[str, Any] = installed.cluster.get_json(GC, "demo", "-n", installed.namespace)
        return gc if (gc.get("status") or {}).get("phase") == "Ready" else None

    installed.cluster.wait_for("GameCluster demo Ready", gc_ready, timeout=READY_TIMEOUT)


@pytest.mark.timeout(600)
def test_helm_test_passes(installed: Installed) -> None:
    try:
        result = installed.helm.test(RELEASE, timeout=240, logs=True)
    except helm.HelmError as err:
        detail = diagnose(installed.cluster, installed.namespace)
        raise E2EError(f"helm test failed: {err}\n{detail}") from err
    # The SDK raises when the test pod fails; its log is the relay CLI's round trip.
    assert result["release"]["status"] == "deployed", result
    assert "relay check: ok" in str(result.get("logs")), result


def mint_token(inst: Installed, pod: str, sub: str, ns: str | None = None) -> str:
    """A token from the generated Secret, minted by the relay's own CLI inside a relay pod
    (RELAY_JWT_SECRET, audience and issuer are that pod's environment)."""
    token = inst.cluster.kubectl(
        "exec", "-n", ns or inst.namespace, pod, "--", "relay", "token", "--sub", sub,
        "--join", "chat:*", "--publish", "chat:*", "--ttl", "5m",
    ).stdout.strip()  # fmt: skip
    assert token.count(".") == 2, token[:40]
    return token


@pytest.mark.timeout(300)
async def test_two_clients_on_two_relay_pods_share_a_room(installed: Installed) -> None:
    relays = pods(installed.cluster, installed.namespace, "app.kubernetes.io/component=relay")
    relays = [p for p in relays if ready(p) and "demo" in p["metadata"]["name"]]
    assert len(relays) == 2, [p["metadata"]["name"] for p in relays]
    (pod_a, pod_b) = relays
    url_a = f"ws://{pod_a['status']['podIP']}:8080/ws"
    url_b = f"ws://{pod_b['status']['podIP']}:8080/ws"
    token_a = mint_token(installed, pod_a["metadata"]["name"], "alice")
    token_b = mint_token(installed, pod_b["metadata"]["name"], "bob")
    async with RelayClient(url_a, token=token_a) as a, RelayClient(url_b, token=token_b) as b:
        assert a.welcome.get("node") != b.welcome.get("node"), (a.welcome, b.welcome)
        await a.join("chat:seed")
        await b.join("chat:seed")
        ack = await a.publish("chat:seed", {"text": "hello from a"}, id="m1")
        assert ack is not None
        event = await b.receive(timeout=15)
        assert event.get("op") == "event" and event.get("data") == {"text": "hello from a"}, event
        await b.publish("chat:seed", {"text": "hello from b"}, id="m2")
        seen = [await a.receive(timeout=15) for _ in range(2)]
        datas = [e.get("data") for e in seen if e.get("op") == "event"]
        assert {"text": "hello from b"} in datas, seen


@pytest.mark.timeout(300)
async def test_connections_column_counts_real_clients(installed: Installed) -> None:
    """Relay pods report their load to Redis; the in-cluster operator reads it (Redis by its
    DNS name) into status.connections, the CONNECTIONS column of `kubectl get gc`."""
    cluster, ns = installed.cluster, installed.namespace
    relays = [p for p in pods(cluster, ns, DEMO_RELAYS) if ready(p)]
    token = mint_token(installed, relays[0]["metadata"]["name"], "counter")
    url_a, url_b = (f"ws://{p['status']['podIP']}:8080/ws" for p in relays[:2])
    # Three: more than the previous test's two (a stale report could not pass this).
    async with (
        RelayClient(url_a, token=token),
        RelayClient(url_a, token=token),
        RelayClient(url_b, token=token),
    ):

        def counted() -> str | None:
            cell = column(cluster, ns, "demo", "CONNECTIONS")
            return cell if cell.isdigit() and int(cell) >= 3 else None

        # In a thread: the clients' connections stay served by this event loop meanwhile.
        cell = await asyncio.to_thread(cluster.wait_for, "CONNECTIONS column >= 3", counted, 120.0)
    assert int(cell) == 3


PUBLISH_EVERY = 0.05
"""Seconds between the publisher's events: 20 a second, under the demo's 50 per connection."""


async def read_until(
    room: Room, seen: list[RoomMessage], done: Callable[[list[Event]], bool], timeout: float
) -> list[Event]:
    """Read `room` into `seen` until `done(events so far)`; the events read."""
    async with asyncio.timeout(timeout):
        while True:
            events = [m for m in seen if isinstance(m, Event)]
            if done(events):
                return events
            seen.append(await room.receive())


@pytest.mark.timeout(600)
async def test_deleting_the_clients_relay_pod_resumes_it_on_the_other_exactly_once(
    installed: Installed,
) -> None:
    """`kubectl delete pod` of the relay a client is on: the kubelet stops it (preStop, SIGTERM,
    the relay's drain says `reconnect`), the client moves to the other pod and resumes its
    durable room from its last position while events keep coming: each once, in order."""
    cluster, ns = installed.cluster, installed.namespace
    relays = wait_pods_ready(installed, DEMO_RELAYS, 2, "the demo's 2 relays")
    (name_a, url_a), (name_b, url_b) = (
        (p["metadata"]["name"], f"ws://{p['status']['podIP']}:8080/ws") for p in relays
    )
    fast = Backoff(min_delay=0.05, max_delay=0.5)
    player = Client([url_a, url_b], token=mint_token(installed, name_a, "player"), backoff=fast)
    publisher = Client([url_b], token=mint_token(installed, name_b, "publisher"), backoff=fast)
    room_name = f"chat:resume-{secrets.token_hex(4)}"  # chat:* is durable in the demo
    stop = asyncio.Event()
    sent: list[int] = []

    async def publish_until_stopped() -> None:
        room = publisher.room(room_name)
        while not stop.is_set():
            n = len(sent)
            await room.publish(n, id=f"n-{n}")
            sent.append(n)
            await asyncio.sleep(PUBLISH_EVERY)  # pacing (the rate limit), not a wait for state

    async with player, publisher:
        assert player.node == name_a  # the welcome's node is the pod's name
        room = player.room(room_name)
        joined = await room.join()
        assert joined.epoch is not None and joined.recovered is None
        seen: list[RoomMessage] = []
        publishing = asyncio.create_task(publish_until_stopped())
        try:
            await read_until(room, seen, lambda events: len(events) >= 20, 60)
            await asyncio.to_thread(
                cluster.kubectl, "delete", "pod", "-n", ns, name_a, "--wait=false"
            )
            # Moved, and reading live events published after the move.
            before_move = len([m for m in seen if isinstance(m, Event)])
            await read_until(
                room,
                seen,
                lambda events: player.node == name_b and len(events) >= before_move + 40,
                120,
            )
        finally:
            stop.set()
            await publishing
        events = await read_until(room, seen, lambda events: len(events) >= len(sent), 60)
    assert [e.data for e in events] == sent == list(range(len(sent)))  # each once, in order
    assert [e.offset for e in events] == list(range(1, len(sent) + 1))
    recovered = [m for m in seen if isinstance(m, Recovered)]
    assert len(recovered) == 1 and recovered[0].epoch == joined.epoch, recovered
    assert not [m for m in seen if isinstance(m, Lost)]
    assert player.stats.duplicates == player.stats.gaps == player.stats.not_recovered == 0
    assert player.stats.connects == 2, player.stats
    # The pod really went: the kubelet stopped it and the Deployment replaced it.
    cluster.wait_for(
        f"pod {name_a} gone",
        lambda: cluster.get_or_none("pod", name_a, "-n", ns) is None or None,
        timeout=120,
    )
    wait_pods_ready(installed, DEMO_RELAYS, 2, "2 relays again")


def gamecluster(name: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "gamecluster.io/v1alpha1",
        "kind": "GameCluster",
        "metadata": {"name": name},
        "spec": {"imagePullPolicy": "Never", **spec},
    }


def relays_of(name: str) -> str:
    return f"app.kubernetes.io/instance={name},app.kubernetes.io/component=relay"


def arena(inst: Installed, name: str, relays: int, redis: dict[str, Any]) -> dict[str, Any]:
    """A GameCluster beside the demo, on the demo's image; its Redis keeps no data on disk
    (these rooms live as long as their test)."""
    demo = inst.cluster.get_json(GC, "demo", "-n", inst.namespace)["spec"]
    return {
        "apiVersion": "gamecluster.io/v1alpha1",
        "kind": "GameCluster",
        "metadata": {"name": name, "namespace": inst.namespace},
        "spec": {
            "replicas": relays,
            "image": demo["image"],
            "imagePullPolicy": demo["imagePullPolicy"],
            "redis": {**redis, "persistence": {"enabled": False}},
        },
    }


def tls_secret(directory: Path, ns: str, secret: str, dns_names: list[str]) -> dict[str, Any]:
    """A kubernetes.io/tls Secret as cert-manager writes it: a certificate for `dns_names`
    and the CA that signed it."""
    ca, cert, key = tls.make_pki(directory, dns_names=dns_names)
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "kubernetes.io/tls",
        "metadata": {"name": secret, "namespace": ns},
        "stringData": {
            "ca.crt": ca.read_text(),
            "tls.crt": cert.read_text(),
            "tls.key": key.read_text(),
        },
    }


def column(cluster: Cluster, ns: str, name: str, header: str) -> str:
    """One cell of `kubectl get gc NAME` (the printer columns a user sees); "" when empty."""
    out = cluster.kubectl("get", GC, name, "-n", ns).stdout
    head, row = out.splitlines()[:2]
    start = head.index(header)
    # Cells start under their header; an empty cell is blanks up to the next header.
    nxt = [head.index(h, start) for h in head[start:].split()[1:2]]
    return row[start : nxt[0] if nxt else None].strip()


AUTOSCALING = {
    "enabled": True,
    "minReplicas": 1,
    "maxReplicas": 3,
    "targetConnectionsPerReplica": 2,
}
"""Small on purpose: five connections recommend ceil(5 / 2) = 3 pods, the maximum."""


@pytest.mark.timeout(900)
async def test_autoscaler_scales_relays_on_real_load_reports(installed: Installed) -> None:
    """The relay pods' load reports (in the GameCluster's own Redis pod) are what the in-cluster
    operator reads: the CONNECTIONS column fills, and five connections on one pod scale the
    relay Deployment from 1 to 3 (docs/operator.md, Scaling)."""
    cluster = installed.cluster
    with cluster.namespace("gc-autoscale") as ns:
        cluster.apply(gamecluster("loaded", autoscaling=AUTOSCALING), "-n", ns)
        [relay] = wait_pods_ready(installed, relays_of("loaded"), 1, "1 relay (minReplicas)", ns)

        def status() -> dict[str, Any]:
            return dict(cluster.get_json(GC, "loaded", "-n", ns).get("status") or {})

        # Before any client: the load is known (every ready pod reported) and it is 0.
        cluster.wait_for(
            "load known: connections 0", lambda: status().get("connections") == 0 or None, 180
        )
        assert column(cluster, ns, "loaded", "CONNECTIONS") == "0"
        name = relay["metadata"]["name"]
        url = f"ws://{relay['status']['podIP']}:8080/ws"
        token = mint_token(installed, name, "load", ns)
        async with contextlib.AsyncExitStack() as stack:
            for _ in range(5):
                await stack.enter_async_context(RelayClient(url, token=token))

            def scaled() -> dict[str, Any] | None:
                s = status()
                auto = s.get("autoscaling") or {}
                return s if s.get("connections") == 5 and auto.get("desiredReplicas") == 3 else None

            # In a thread: the clients' connections stay served by this event loop meanwhile.
            now = await asyncio.to_thread(
                cluster.wait_for, "5 connections read, 3 pods decided", scaled, 180.0
            )
            assert now["desiredReplicas"] == 3
            assert column(cluster, ns, "loaded", "CONNECTIONS") == "5"
            assert column(cluster, ns, "loaded", "DESIRED") == "3"
            deployment = cluster.get_json("deployment", "loaded-relay", "-n", ns)
            assert deployment["spec"]["replicas"] == 3
            await asyncio.to_thread(
                wait_pods_ready, installed, relays_of("loaded"), 3, "3 relays (scaled up)", ns
            )
        events = cluster.get_json(
            "events", "-n", ns, "--field-selector", "involvedObject.name=loaded,reason=ScaledUp"
        )["items"]
        # One decision, 1 -> 3 at once (the default policy allows +4 per 15 s).
        assert [e["message"].split(":")[0] for e in events] == ["relay pods 1 -> 3"], events


TRACED_SERVICE = "traced-relay"
"""The operator's OTEL_SERVICE_NAME for GameCluster `traced`'s relay pods."""


@pytest.mark.timeout(900)
async def test_relay_pods_export_one_trace_with_spans_from_two_pods(
    installed: Installed, pod_jaeger: Jaeger
) -> None:
    """A GameCluster with tracing on: its relay pods send OTLP (gRPC) to the Jaeger process on
    the host; one publish is one trace with its `publish room` span from the publisher's pod
    and a `process room` span from each pod that delivered it, under the service name and
    resource attributes the operator gives them (OTEL_SERVICE_NAME `traced-relay`)."""
    cluster = installed.cluster
    tracing = {
        "enabled": True,
        "otlpEndpoint": f"http://{pod_jaeger.otlp_grpc_endpoint}",
        "protocol": "grpc",
        "samplingRatio": 1.0,
    }
    with cluster.namespace("gc-traced") as ns:
        cluster.apply(gamecluster("traced", replicas=2, tracing=tracing), "-n", ns)
        relays = wait_pods_ready(installed, relays_of("traced"), 2, "2 traced relays", ns)
        (name_a, url_a), (name_b, url_b) = (
            (p["metadata"]["name"], f"ws://{p['status']['podIP']}:8080/ws") for p in relays
        )
        token = mint_token(installed, name_a, "tracer", ns)
        since = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=5)
        room = f"chat:trace-{secrets.token_hex(4)}"  # this test's spans, whatever else is there
        data = {"move": "e2e4"}
        async with (
            RelayClient(url_a, token=token) as publisher,
            RelayClient(url_a, token=token) as on_a,
            RelayClient(url_b, token=token) as on_b,
        ):
            assert (on_a.welcome.get("node"), on_b.welcome.get("node")) == (name_a, name_b)
            for client in (publisher, on_a, on_b):
                await client.join(room)
            await publisher.publish(room, data, id="move-1")
            for client in (publisher, on_a, on_b):
                event = await client.receive(timeout=15)
                assert (event["op"], event["data"]) == ("event", data), event

        def one_trace() -> list[dict[str, Any]] | None:
            spans = room_spans(pod_jaeger, since, room, service=TRACED_SERVICE)
            producers = [s for s in spans if s["name"] == PUBLISH]
            consumers = [s for s in spans if s["name"] == PROCESS]
            return spans if len(producers) == 1 and len(consumers) == 2 else None

        def why() -> str:
            return (
                f"services in Jaeger: {pod_jaeger.services()}\n{pod_jaeger.process.tail()}\n"
                + diagnose(cluster, ns)
            )

        # The SDK's batch processor sends within its schedule delay (5 s by default).
        spans = await asyncio.to_thread(
            wait_until,
            f"the trace of one publish to {room} in Jaeger",
            one_trace,
            timeout=60.0,
            interval=0.5,
            on_timeout=why,
        )
    assert len({s["traceId"] for s in spans}) == 1, spans
    [producer] = [s for s in spans if s["name"] == PUBLISH]
    consumers = {s["resource"]["service.instance.id"]: s for s in spans if s["name"] == PROCESS}
    assert producer["resource"]["service.instance.id"] == name_a  # RELAY_NODE_ID: the pod name
    assert sorted(consumers) == sorted([name_a, name_b])  # the event crossed Redis to pod b
    for consumer in consumers.values():
        assert consumer["parentSpanId"] == producer["spanId"]
    for span in spans:
        assert span["resource"]["service.name"] == TRACED_SERVICE
        assert span["resource"]["k8s.namespace.name"] == ns


@pytest.mark.timeout(600)
async def test_a_gamecluster_with_tls_redis_serves_on_the_real_node(
    installed: Installed, tmp_path: Path
) -> None:
    """spec.redis.tls on real pods: a certificate for the shard pods' DNS names in a
    kubernetes.io/tls Secret, as cert-manager writes it. The TLS-only Redis pod passes its
    readiness probe (redis-cli over TLS in the real image, the Secret mounted 0440 for the
    redis user), the relay reaches it over rediss:// checking the hostname, the in-cluster
    operator reads the load report over TLS (CONNECTIONS), and events flow."""
    cluster, ns = installed.cluster, installed.namespace
    name = "tlsarena"
    secret = tls_secret(tmp_path, ns, f"{name}-tls", [f"*.{name}-redis.{ns}.svc"])
    gamecluster = arena(installed, name, 1, {"tls": {"secretName": f"{name}-tls"}})
    for manifest in (secret, gamecluster):
        cluster.kubectl("apply", "-f", "-", input=json.dumps(manifest))
    try:
        instance = f"app.kubernetes.io/instance={name}"
        wait_pods_ready(installed, f"{instance},app.kubernetes.io/component=redis", 1, "TLS Redis")
        (relay,) = wait_pods_ready(
            installed, f"{instance},app.kubernetes.io/component=relay", 1, "relay on TLS Redis"
        )
        token = mint_token(installed, relay["metadata"]["name"], "tls")
        url = f"ws://{relay['status']['podIP']}:8080/ws"
        async with RelayClient(url, token=token) as a, RelayClient(url, token=token) as b:
            position = await a.join("chat:tls")
            ack = await a.publish("chat:tls", "over tls", id="t1")  # durable: EVALSHA, XADD
            assert ack is not None and ack["offset"] == 1
            await b.join("chat:tls", since={"epoch": position["epoch"], "offset": 0})
            assert (await b.receive(timeout=15)).get("data") == "over tls"  # history read

            def counted() -> str | None:
                cell = column(cluster, ns, name, "CONNECTIONS")
                return cell if cell == "2" else None

            await asyncio.to_thread(cluster.wait_for, "CONNECTIONS over TLS", counted, 120.0)
    except E2EError as err:
        raise E2EError(f"{err}\n{diagnose(cluster, ns)}") from None
    finally:
        cluster.kubectl("delete", GC, name, "-n", ns, "--wait=true", "--timeout=120s", check=False)
        cluster.kubectl("delete", "secret", f"{name}-tls", "-n", ns, check=False)


@pytest.mark.timeout(900)
async def test_a_shard_added_on_the_real_node_moves_rooms_through_the_shard_map(
    installed: Installed,
) -> None:
    """`redis.shards` 1 -> 2 on real pods, end to end: the operator rolls the relays onto
    both shards, asks them (server API, its generated key) to switch the shard map, and
    records Stable in status.shards. A durable room that stays on shard 0 resumes with its
    history (`recovered: true`); one that moved to the new shard starts a new epoch there
    (`recovered: false`, never a silent gap); after the switch both relay pods deliver
    each other's events in rooms on both shards."""
    cluster, ns = installed.cluster, installed.namespace
    name = "shardarena"
    gamecluster = arena(installed, name, 2, {"shards": 1})
    instance = f"app.kubernetes.io/instance={name}"
    relays_selector = f"{instance},app.kubernetes.io/component=relay"
    cluster.kubectl("apply", "-f", "-", input=json.dumps(gamecluster))
    try:
        relays = wait_pods_ready(installed, relays_selector, 2, "relays on one shard")
        shard_names = [f"{name}-redis-{i}.{name}-redis.{ns}.svc:6379" for i in range(2)]
        two = ShardMap(2, tuple(shard_names))
        rooms = [f"chat:room-{n}" for n in range(40)]
        staying = next(r for r in rooms if two.place(r) == shard_names[0])
        moving = next(r for r in rooms if two.place(r) == shard_names[1])
        token = mint_token(installed, relays[0]["metadata"]["name"], "sharder", ns)
        url = f"ws://{relays[0]['status']['podIP']}:8080/ws"
        before: dict[str, dict[str, Any]] = {}
        async with RelayClient(url, token=token) as client:
            for room in (staying, moving):
                before[room] = await client.join(room)
                ack = await client.publish(room, f"before in {room}", id=f"b-{room}")
                assert ack is not None and ack["offset"] == 1, ack

        cluster.kubectl(
            "patch", GC, name, "-n", ns, "--type=merge", "-p", '{"spec":{"redis":{"shards":2}}}'
        )

        def switched() -> dict[str, Any] | None:
            status = cluster.get_json(GC, name, "-n", ns).get("status") or {}
            shards = status.get("shards") or {}
            done = shards.get("phase") == "Stable" and shards.get("active") == 2
            return shards if done else None

        try:
            await asyncio.to_thread(cluster.wait_for, "the shard map switched to 2", switched, 600)
        except E2EError as err:
            status = cluster.get_json(GC, name, "-n", ns).get("status")
            raise E2EError(f"{err}\nstatus: {status}\n{diagnose(cluster, ns)}") from None
        relays = wait_pods_ready(installed, relays_selector, 2, "relays on two shards")
        pod = relays[0]["metadata"]["name"]
        shown = json.loads(
            cluster.kubectl("exec", "-n", ns, pod, "--", "relay", "shards", "show")
            .stdout.strip()
            .splitlines()[-1]
        )
        assert shown["version"] >= 2 and shown["shards"] == shard_names, shown
        assert shown["phase"] == "stable", shown

        token = mint_token(installed, pod, "sharder", ns)
        url_a, url_b = (f"ws://{p['status']['podIP']}:8080/ws" for p in relays)
        async with RelayClient(url_a, token=token) as a, RelayClient(url_b, token=token) as b:
            kept = await a.join(staying, since={"epoch": before[staying]["epoch"], "offset": 0})
            assert kept["recovered"] is True, kept  # its history stayed on shard 0
            assert (await a.receive(timeout=15)).get("data") == f"before in {staying}"
            moved = await a.join(moving, since={"epoch": before[moving]["epoch"], "offset": 0})
            assert moved["recovered"] is False, moved  # new shard, new epoch: told so
            assert moved["epoch"] != before[moving]["epoch"]
            for room in (staying, moving):
                await b.join(room)
                ack = await b.publish(room, f"after in {room}", id=f"a-{room}")
                assert ack is not None, ack
                event = await a.receive(timeout=15)
                assert event.get("data") == f"after in {room}", event
    finally:
        cluster.kubectl("delete", GC, name, "-n", ns, "--wait=true", "--timeout=180s", check=False)


@pytest.mark.timeout(900)
@pytest.mark.parametrize("over_tls", [False, True], ids=["plain", "tls"])
async def test_a_sentinel_failover_on_the_real_node_is_followed_and_fenced(
    installed: Installed, tmp_path: Path, over_tls: bool
) -> None:
    """`redis.replicas: 1` with `ackReplicas: 1` on real pods: the shard's master and
    replica, three Sentinels (their own password) and a relay that finds the master
    through them. A durable publish is acked once the replica has it (WAIT). Then the
    Sentinels fail the shard over (SENTINEL FAILOVER, as an operator would before a node
    drain): the relay follows the new master, fences the shard (a resume from before is
    told `recovered: false` with a new epoch, never a silent gap), and acks again only
    once the old master, back as a replica, confirms its writes. With `redis.tls` too:
    servers, replication and Sentinels TLS only, one certificate naming the shard and the
    Sentinel pods, the relay checking hostnames on both."""
    cluster, ns = installed.cluster, installed.namespace
    name = "hatls" if over_tls else "haarena"
    redis: dict[str, Any] = {"replicas": 1, "ackReplicas": 1}
    if over_tls:
        domains = [f"*.{name}-redis.{ns}.svc", f"*.{name}-sent.{ns}.svc"]
        secret = tls_secret(tmp_path, ns, f"{name}-tls", domains)
        cluster.kubectl("apply", "-f", "-", input=json.dumps(secret))
        redis["tls"] = {"secretName": f"{name}-tls"}
    instance = f"app.kubernetes.io/instance={name}"
    cluster.kubectl("apply", "-f", "-", input=json.dumps(arena(installed, name, 1, redis)))

    def ask_sentinel(*command: str) -> str:
        """A command to the first Sentinel, logged in with its password (never on a
        command line: REDISCLI_AUTH from the container's own environment)."""
        script = (  # REDIS_CLI_TLS: the container's TLS flags for redis-cli, if any
            'REDISCLI_AUTH="$SENTINEL_AUTH_PASSWORD" '
            'redis-cli ${REDIS_CLI_TLS:-} -p 26379 --raw "$@"'
        )
        return cluster.kubectl(
            "exec", "-n", ns, f"{name}-sent-0", "--", "sh", "-c", script, "sh", *command
        ).stdout.strip()  # fmt: skip

    def master() -> str:
        return ask_sentinel("SENTINEL", "get-master-addr-by-name", "shard-0").split()[0]

    try:
        wait_pods_ready(installed, f"{instance},app.kubernetes.io/component=redis", 2, "Redis")
        wait_pods_ready(
            installed, f"{instance},app.kubernetes.io/component=redis-sentinel", 3, "Sentinels"
        )
        (relay,) = wait_pods_ready(
            installed, f"{instance},app.kubernetes.io/component=relay", 1, "relay via Sentinel"
        )
        token = mint_token(installed, relay["metadata"]["name"], "ha")
        url = f"ws://{relay['status']['podIP']}:8080/ws"
        async with RelayClient(url, token=token) as client:
            before = await client.join("chat:ha")
            for n in range(3):
                ack = await client.publish("chat:ha", f"before {n}", id=f"b{n}")
                assert ack is not None and ack["offset"] == n + 1, ack  # WAIT 1 answered
        old = master()
        assert old.startswith(f"{name}-rs0-0."), old  # pod 0 starts as master
        assert ask_sentinel("SENTINEL", "failover", "shard-0") == "OK"
        await asyncio.to_thread(
            cluster.wait_for, "the Sentinels to promote the replica",
            lambda: master() if master() != old else None, 120.0,
        )  # fmt: skip
        assert master().startswith(f"{name}-rs0-1."), master()

        async def publish_after() -> dict[str, Any]:
            # Refused (`unavailable`, retryable) until the relay has fenced the shard and
            # the old master replicates the new one (ackReplicas 1); then acked.
            while True:
                async with RelayClient(url, token=token) as publisher:
                    try:
                        ack = await publisher.publish("chat:ha", "after", id="after")
                    except UnavailableError:
                        await asyncio.sleep(1)  # the client's retry period
                        continue
                    assert ack is not None, ack
                    return ack

        after = await asyncio.wait_for(publish_after(), 120)
        async with RelayClient(url, token=token) as client:
            resumed = await client.join("chat:ha", since={"epoch": before["epoch"], "offset": 0})
            assert resumed["recovered"] is False, resumed  # the fence: assume the worst
            assert resumed["epoch"] != before["epoch"], resumed
            assert resumed["offset"] == after["offset"], (resumed, after)  # the room goes on
    except E2EError as err:
        raise E2EError(f"{err}\n{diagnose(cluster, ns)}") from None
    finally:
        cluster.kubectl("delete", GC, name, "-n", ns, "--wait=true", "--timeout=180s", check=False)
        cluster.kubectl("delete", "secret", f"{name}-tls", "-n", ns, check=False)


@pytest.mark.timeout(600)
def test_operator_pod_replaced_carries_on(installed: Installed) -> None:
    cluster, ns = installed.cluster, installed.namespace
    selector = f"app.kubernetes.io/instance={RELEASE},{OPERATOR_COMPONENT}"
    names = [p["metadata"]["name"] for p in pods(cluster, ns, selector)]
    leader = cluster.wait_for("the leader", lambda: lease_holder(installed, names), 60.0)
    # The leader's pod goes: the standby takes the Lease, and a replacement pod stands by.
    cluster.kubectl("delete", "pod", "-n", ns, leader, "--wait=false")

    def new_leader() -> str | None:
        now = [p["metadata"]["name"] for p in pods(cluster, ns, selector)]
        holder = lease_holder(installed, [n for n in now if n != leader])
        return holder

    def replaced() -> list[dict[str, Any]] | None:
        found = [p for p in pods(cluster, ns, selector) if p["metadata"]["name"] != leader]
        return found if len(found) == OPERATOR_REPLICAS and all(map(ready, found)) else None

    try:
        cluster.wait_for("another operator pod leading", new_leader, timeout=READY_TIMEOUT)
        new = cluster.wait_for("the operator pods Ready again", replaced, timeout=READY_TIMEOUT)
    except E2EError as err:
        raise E2EError(f"{err}\n{diagnose(cluster, ns)}") from None
    assert all(p["spec"]["nodeName"] == node_mod.NODE_NAME for p in new)
    # The replacement acts: a scale of the demo becomes a third Ready relay pod.
    cluster.kubectl("scale", GC, "demo", "-n", ns, "--replicas=3")
    wait_pods_ready(
        installed,
        "app.kubernetes.io/instance=demo,app.kubernetes.io/component=relay",
        3,
        "3 relays",
    )


@pytest.mark.timeout(300)
def test_helm_uninstall_leaves_no_gamecluster_behind(installed: Installed) -> None:
    """The chart's pre-delete hook (demo-cleanup.yaml) deletes the demo while the operator
    still runs: without it the demo's kopf finalizer outlived the operator (Terminating)."""
    cluster, ns = installed.cluster, installed.namespace
    installed.uninstalled = True
    try:
        installed.helm.uninstall(RELEASE, wait="watcher", timeout=120)
    except helm.HelmError as err:
        gc = cluster.get_or_none(GC, "demo", "-n", ns)
        finalizers = (gc or {}).get("metadata", {}).get("finalizers")
        # Let the namespace go: nothing is left to remove the finalizer.
        cluster.kubectl(
            "patch", GC, "demo", "-n", ns, "--type=merge",
            "-p", '{"metadata":{"finalizers":null}}', check=False,
        )  # fmt: skip
        raise AssertionError(
            f"uninstall left GameCluster demo, finalizers {finalizers}: {err}"
        ) from err
    assert cluster.get_or_none(GC, "demo", "-n", ns) is None
