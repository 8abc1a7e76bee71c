"""Entrypoint ``gamecluster-operator``: kopf with a liveness endpoint and metrics.

kopf runs standalone; with GAMECLUSTER_LEADER_ELECTION it runs only while this replica holds
the Lease (``leader``: why a Lease and not kopf's peering). Reconciliation is level-based, so
a failover loses nothing: the new leader's resume handlers re-apply every GameCluster.
"""

import argparse
import asyncio
import contextlib
import logging
import socket
import sys
import uuid
from collections.abc import Coroutine, Sequence
from typing import Any

import kopf
from aiohttp import web
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from prometheus_client import start_http_server
from pydantic import ValidationError

from gamecluster.cluster import KubeCluster
from gamecluster.handlers import Context, build_registry
from gamecluster.leader import LeaseConfig, LeaseElector
from gamecluster.load import RedisLoadSource
from gamecluster.metrics import OperatorMetrics
from gamecluster.reconcile import Reconciler
from gamecluster.settings import OperatorSettings


def _api_client() -> k8s.ApiClient:
    """In-cluster credentials when running in a pod, else the local kubeconfig."""
    try:
        k8s_config.load_incluster_config()  # type: ignore[no-untyped-call]
    except k8s_config.ConfigException:
        k8s_config.load_kube_config()  # type: ignore[no-untyped-call]
    return k8s.ApiClient()


def operator_registry(settings: OperatorSettings) -> kopf.OperatorRegistry:
    """The handlers, plus how kopf logs in. A registry of our own has none of the login
    handlers kopf puts into its global one: without this, kopf finds no credentials at all.
    The same ones as our own API client: in-cluster, else the local kubeconfig."""
    registry = build_registry(resync_seconds=settings.resync_seconds)
    kopf.on.login(registry=registry, id="login")(kopf.login_via_client)
    return registry


STOP_SECONDS = 30.0
"""Bound on kopf's own shutdown after the Lease was lost."""

logger = logging.getLogger(__name__)


async def run(settings: OperatorSettings, api: k8s.ApiClient) -> None:
    """Run until cancelled or until kopf stops (SIGTERM/SIGINT are handled by kopf).

    With leader election: wait for the Lease first; exit(1) when it is lost.
    """
    metrics = OperatorMetrics()
    if settings.metrics_port:
        start_http_server(settings.metrics_port, settings.liveness_host, registry=metrics.registry)
    context = Context(
        reconciler=Reconciler(
            KubeCluster(api, timeout_seconds=settings.api_timeout_seconds),
            relay_image=settings.relay_image,
            operator_namespace=settings.namespace or None,
        ),
        load=RedisLoadSource(),
        metrics=metrics,
    )
    namespaces = settings.namespaces
    stop_flag: asyncio.Event = asyncio.Event()

    def operator() -> Coroutine[Any, Any, None]:
        return kopf.operator(
            registry=operator_registry(settings),
            memo=kopf.Memo(ctx=context),
            standalone=True,
            clusterwide=not namespaces,
            namespaces=namespaces,
            liveness_endpoint=f"http://{settings.liveness_host}:{settings.liveness_port}/healthz",
            stop_flag=stop_flag,
        )

    if not settings.leader_election:
        await operator()
        return
    identity = settings.pod_name or f"{socket.gethostname()}-{uuid.uuid4().hex[:8]}"
    elector = LeaseElector(
        api, LeaseConfig(settings.lease_name, settings.lease_namespace, identity)
    )
    # 1. Stand by until this replica leads, answering the kubelet's probes meanwhile (kopf's
    #    liveness endpoint exists only once kopf runs, in the leader).
    standby = await _standby_health(settings)
    try:
        await elector.acquire()
    finally:
        await standby.cleanup()
    # 2. Run kopf and keep renewing next to it.
    kopf_task = asyncio.create_task(operator())
    holder = asyncio.create_task(elector.hold())
    done, _ = await asyncio.wait({kopf_task, holder}, return_when=asyncio.FIRST_COMPLETED)
    if holder in done:
        # 3. Lost: stop acting now, bounded, and exit so the kubelet restarts us as a standby.
        stop_flag.set()
        with contextlib.suppress(TimeoutError, asyncio.CancelledError):
            await asyncio.wait_for(kopf_task, STOP_SECONDS)
        sys.exit("gamecluster-operator: lost the leader Lease; exiting to stand by again")
    # 4. kopf stopped (SIGTERM): hand the Lease over at once.
    holder.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await holder
    await asyncio.to_thread(elector.release)
    kopf_task.result()


async def _standby_health(settings: OperatorSettings) -> web.AppRunner:
    """/healthz answering 200 on kopf's liveness address until this replica leads."""

    async def healthz(_: web.Request) -> web.Response:
        return web.Response(text="standing by for the leader Lease\n")

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, settings.liveness_host, settings.liveness_port).start()
    return runner


def _parse_args(argv: Sequence[str] | None) -> None:
    """No options but --help: every setting is a GAMECLUSTER_* environment variable."""
    lines = []
    for name, info in OperatorSettings.model_fields.items():
        default = "required" if info.is_required() else f"default {info.default!r}"
        lines.append(f"  GAMECLUSTER_{name.upper()}  ({default})")
    argparse.ArgumentParser(
        prog="gamecluster-operator",
        description="The GameCluster operator (kopf; with GAMECLUSTER_LEADER_ELECTION, a Lease "
        "elects the leader). Settings come from the "
        "environment; credentials are in-cluster, else the local kubeconfig.",
        epilog="environment:\n" + "\n".join(lines),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    ).parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    # 0. The command line: only --help (argparse exits there, and on any unknown argument).
    _parse_args(argv)
    # 1. Settings first: a bad value stops the process with one line naming it.
    try:
        settings = OperatorSettings()  # fields come from the env
    except ValidationError as exc:
        first = exc.errors()[0]
        field = "GAMECLUSTER_" + "_".join(str(part) for part in first["loc"]).upper()
        sys.exit(f"gamecluster-operator: {field}: {first['msg']} (got {first.get('input')!r})")
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # 2. Credentials for our own client (kopf finds its own the same way).
    api = _api_client()
    # 3. Run kopf until it is told to stop.
    asyncio.run(run(settings, api))


if __name__ == "__main__":
    main()
