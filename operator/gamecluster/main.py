"""Entrypoint ``gamecluster-operator``: kopf with a liveness endpoint, standalone.

Standalone, on purpose: kopf's peering is not leader election (a lower-priority peer pauses
while a higher one is alive; equal priorities freeze each other), so the operator runs as one
replica with ``strategy: Recreate``, and a restart is the failover. Reconciliation is
level-based, so nothing is lost while it restarts.
"""

import argparse
import asyncio
import logging
import sys
from collections.abc import Sequence

import kopf
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from pydantic import ValidationError

from gamecluster.cluster import KubeCluster
from gamecluster.handlers import Context, build_registry
from gamecluster.load import RedisLoadSource
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


async def run(settings: OperatorSettings, api: k8s.ApiClient) -> None:
    """Run until cancelled or until kopf stops (SIGTERM/SIGINT are handled by kopf)."""
    context = Context(
        reconciler=Reconciler(
            KubeCluster(api, timeout_seconds=settings.api_timeout_seconds),
            relay_image=settings.relay_image,
        ),
        load=RedisLoadSource(),
    )
    namespaces = settings.namespaces
    await kopf.operator(
        registry=operator_registry(settings),
        memo=kopf.Memo(ctx=context),
        standalone=True,
        clusterwide=not namespaces,
        namespaces=namespaces,
        liveness_endpoint=f"http://{settings.liveness_host}:{settings.liveness_port}/healthz",
    )


def _parse_args(argv: Sequence[str] | None) -> None:
    """No options but --help: every setting is a GAMECLUSTER_* environment variable."""
    lines = []
    for name, info in OperatorSettings.model_fields.items():
        default = "required" if info.is_required() else f"default {info.default!r}"
        lines.append(f"  GAMECLUSTER_{name.upper()}  ({default})")
    argparse.ArgumentParser(
        prog="gamecluster-operator",
        description="The GameCluster operator (kopf, standalone). Settings come from the "
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
