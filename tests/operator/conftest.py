"""Fixtures of the operator tier; the harness itself is in kopf_harness.py (importable by
name from test modules, which a conftest is not once several tiers are collected together)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from typing import Any

import kmock
import kopf
import pytest
from kopf_harness import (
    RELAY_IMAGE,
    FakeLoad,
    FakeRelayAdmin,
    Harness,
    OperatorClock,
    declare_resources,
)
from kubernetes import client as k8s

from gamecluster import handlers
from gamecluster.cluster import KubeCluster
from gamecluster.reconcile import Reconciler


@pytest.fixture
def load() -> FakeLoad:
    return FakeLoad()


@pytest.fixture
async def harness(kmock: kmock.KubernetesEmulator, load: FakeLoad) -> AsyncIterator[Harness]:
    """Starts the operator (kopf.operator in a task) against the emulator; stops it after."""
    declare_resources(kmock)
    server = str(kmock.url).rstrip("/")

    registry = handlers.build_registry(resync_seconds=0.5)

    @kopf.on.login(registry=registry)
    def login(**_: Any) -> kopf.ConnectionInfo:
        return kopf.ConnectionInfo(server=server, insecure=True)

    configuration = k8s.Configuration(host=server)
    api = k8s.ApiClient(configuration)
    relay_admin = FakeRelayAdmin()
    clock = OperatorClock()
    context = handlers.Context(
        reconciler=Reconciler(
            KubeCluster(api, timeout_seconds=5),
            relay_image=RELAY_IMAGE,
            relay_admin=relay_admin,
            clock=clock,
        ),
        load=load,
    )
    # kopf runs in its own thread and event loop: on exit it cancels every task of its loop,
    # and the emulator's server tasks must not be among them.
    stop = threading.Event()
    ready = threading.Event()

    def run_operator() -> None:
        asyncio.run(
            kopf.operator(
                registry=registry,
                memo=kopf.Memo(ctx=context),
                standalone=True,
                clusterwide=True,
                stop_flag=stop,
                ready_flag=ready,
            )
        )

    thread = threading.Thread(target=run_operator, name="kopf", daemon=True)
    thread.start()
    assert await asyncio.to_thread(ready.wait, 10), "kopf did not start"
    try:
        yield Harness(kmock, load, context.metrics, relay_admin, clock)
    finally:
        stop.set()
        try:
            await asyncio.to_thread(thread.join, 30)
            assert not thread.is_alive(), "kopf did not stop"
        finally:
            api.close()
