"""Fixtures of the e2e tests (marker `e2e`): a real control plane and a real Jaeger.

Fixtures (see cluster.py for the objects):
  e2e_tools  session  Tools: bin_dir and the pinned versions (tools.sh builds what is missing)
  cluster    session  Cluster: kubeconfig, env, kubectl(), get_json(), apply(), wait_for(),
                      namespace(); local=True for the harness's own control plane, False when
                      KUBECONFIG_E2E points at another cluster
  namespace  function a fresh namespace in `cluster`, deleted afterwards
  jaeger     session  Jaeger: otlp_http_endpoint, otlp_grpc_endpoint, query_url, services()

The tools are built once per session, before the first test runs (outside any test's timeout),
and only when e2e tests are selected.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from .cluster import (
    EXTERNAL_KUBECONFIG_ENV,
    Cluster,
    E2EError,
    Jaeger,
    Tools,
    ensure_tools,
    external_cluster,
    local_control_plane,
    run_jaeger,
    volume_provisioner,
)

_TOOLS_KEY = pytest.StashKey[Tools | E2EError]()


def _external_kubeconfig() -> Path | None:
    value = os.environ.get(EXTERNAL_KUBECONFIG_ENV)
    return Path(value).expanduser() if value else None


def pytest_collection_finish(session: pytest.Session) -> None:
    """Build the tools once, visibly, when any selected test is an e2e test."""
    if not any(item.get_closest_marker("e2e") for item in session.items):
        return
    names = ["jaeger", "kubectl"] if _external_kubeconfig() else []
    capman = session.config.pluginmanager.getplugin("capturemanager")
    try:
        if capman is not None:
            with capman.global_and_fixture_disabled():
                result: Tools | E2EError = ensure_tools(names, stream=True)
        else:
            result = ensure_tools(names, stream=True)
    except E2EError as err:
        result = err
    session.config.stash[_TOOLS_KEY] = result


@pytest.fixture(scope="session")
def e2e_tools(request: pytest.FixtureRequest) -> Tools:
    result = request.config.stash.get(_TOOLS_KEY, None)
    if result is None:  # e.g. a plugin re-ordered collection; build now
        result = ensure_tools(["jaeger", "kubectl"] if _external_kubeconfig() else [], stream=False)
    if isinstance(result, E2EError):
        raise result
    return result


@pytest.fixture(scope="session")
def cluster(e2e_tools: Tools, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    external = _external_kubeconfig()
    if external is not None:
        yield external_cluster(external, e2e_tools)
        return
    with (
        local_control_plane(e2e_tools, tmp_path_factory.mktemp("control-plane")) as c,
        volume_provisioner(c),
    ):
        yield c


@pytest.fixture
def namespace(cluster: Cluster) -> Iterator[str]:
    with cluster.namespace() as ns:
        yield ns


@pytest.fixture(scope="session")
def jaeger(e2e_tools: Tools, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Jaeger]:
    with run_jaeger(e2e_tools.path("jaeger"), tmp_path_factory.mktemp("jaeger")) as j:
        yield j
