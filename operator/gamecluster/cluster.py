"""The operator's few verbs against the Kubernetes API, behind one small interface.

``Cluster`` is what the reconciler needs: server-side apply of a child, GET, DELETE, and a
status patch of the GameCluster. ``KubeCluster`` implements it with the official client:
every apply is ``PATCH`` with ``application/apply-patch+yaml``, one field manager
(``gamecluster-operator``) and ``force=true``, so the operator owns exactly the fields it
sets, takes them back from whoever edited them by hand, and leaves other managers' fields
(an HPA's replicas on another object, defaults) alone.

Calls are synchronous and bounded by ``timeout_seconds``; kopf runs the sync handlers that
make them in worker threads, so the event loop never blocks on the API.
"""

import json
from collections.abc import Mapping
from typing import Any, Final, Protocol

import urllib3
from kubernetes import client as k8s

from gamecluster import names
from gamecluster.children import ChildRef, Manifest

_PLURALS: Final = {
    "ConfigMap": "configmaps",
    "Secret": "secrets",
    "Service": "services",
    "Deployment": "deployments",
    "StatefulSet": "statefulsets",
    "PodDisruptionBudget": "poddisruptionbudgets",
    "NetworkPolicy": "networkpolicies",
    "Pod": "pods",
    "Lease": "leases",
    names.KIND: names.PLURAL,
}


MAX_PODS_LISTED: Final = 2000
"""One page of relay pods; maxReplicas is at most 1000, so one page holds them all (surge
included). A longer list is cut, and the load reading then lacks pods and is incomplete."""


class ClusterError(Exception):
    """An API call failed; ``status`` is the HTTP status (0 when there was no response)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status}: {message}" if status else message)
        self.status = status

    @property
    def retryable(self) -> bool:
        """Conflicts, throttling, server errors and network errors may pass on their own."""
        return self.status in (0, 409, 429) or self.status >= 500


class Cluster(Protocol):
    def apply(self, manifest: Manifest) -> Manifest:
        """Server-side apply under the operator's field manager; returns the stored object."""
        ...

    def get(self, ref: ChildRef) -> Manifest | None:
        """The object, or None when it does not exist."""
        ...

    def delete(self, ref: ChildRef) -> None:
        """Delete (background propagation); a missing object is not an error."""
        ...

    def patch_status(self, namespace: str, name: str, status: Mapping[str, Any]) -> None:
        """JSON merge patch of the GameCluster's status subresource."""
        ...

    def list_pods(self, namespace: str, selector: str) -> list[Manifest]:
        """Pods matching a label selector (``k=v,k=v``)."""
        ...

    def annotate_pod(self, namespace: str, name: str, annotations: Mapping[str, str]) -> None:
        """JSON merge patch of one pod's annotations; a missing pod is not an error."""
        ...


def path_of(api_version: str, kind: str, namespace: str, name: str | None = None) -> str:
    plural = _PLURALS[kind]
    base = f"/api/{api_version}" if "/" not in api_version else f"/apis/{api_version}"
    path = f"{base}/namespaces/{namespace}/{plural}"
    return f"{path}/{name}" if name else path


class KubeCluster:
    def __init__(self, api: k8s.ApiClient, timeout_seconds: float = 30.0) -> None:
        self._api = api
        self._timeout = timeout_seconds

    def apply(self, manifest: Manifest) -> Manifest:
        ref = ChildRef.of(manifest)
        result = self._call(
            "PATCH",
            path_of(ref.api_version, ref.kind, ref.namespace, ref.name),
            query=[("fieldManager", names.FIELD_MANAGER), ("force", "true")],
            content_type="application/apply-patch+yaml",
            body=manifest,
        )
        if result is None:
            raise ClusterError(404, f"apply of {ref.kind} {ref.namespace}/{ref.name} found nothing")
        return result

    def get(self, ref: ChildRef) -> Manifest | None:
        return self._call("GET", path_of(ref.api_version, ref.kind, ref.namespace, ref.name))

    def delete(self, ref: ChildRef) -> None:
        self._call(
            "DELETE",
            path_of(ref.api_version, ref.kind, ref.namespace, ref.name),
            body={"apiVersion": "v1", "kind": "DeleteOptions", "propagationPolicy": "Background"},
        )

    def patch_status(self, namespace: str, name: str, status: Mapping[str, Any]) -> None:
        path = path_of(names.API_VERSION, names.KIND, namespace, name) + "/status"
        self._call(
            "PATCH", path, content_type="application/merge-patch+json", body={"status": status}
        )

    def list_pods(self, namespace: str, selector: str) -> list[Manifest]:
        result = self._call(
            "GET",
            path_of("v1", "Pod", namespace),
            query=[("labelSelector", selector), ("limit", str(MAX_PODS_LISTED))],
        )
        items = (result or {}).get("items") or []
        return [item for item in items if isinstance(item, dict)]

    def annotate_pod(self, namespace: str, name: str, annotations: Mapping[str, str]) -> None:
        self._call(
            "PATCH",
            path_of("v1", "Pod", namespace, name),
            content_type="application/merge-patch+json",
            body={"metadata": {"annotations": dict(annotations)}},
        )

    def _call(
        self,
        method: str,
        path: str,
        *,
        query: list[tuple[str, str]] | None = None,
        content_type: str = "application/json",
        body: Any = None,
    ) -> Manifest | None:
        """One request; None on 404, ClusterError on any other failure."""
        headers = {"Accept": "application/json", "Content-Type": content_type}
        try:
            serialized = self._api.param_serialize(
                method,
                path,
                query_params=query or [],
                header_params=headers,
                body=body,
                auth_settings=["BearerToken"],
            )
            response = self._api.call_api(*serialized, _request_timeout=self._timeout)
            payload: bytes = response.read()  # type: ignore[no-untyped-call]  # untyped in the client
        except k8s.ApiException as exc:
            raise ClusterError(exc.status or 0, str(exc.reason)) from exc
        except (urllib3.exceptions.HTTPError, OSError) as exc:  # no response at all
            raise ClusterError(0, f"{method} {path}: {exc}") from exc
        if response.status == 404:
            return None
        if response.status >= 400:
            raise ClusterError(response.status, f"{method} {path}: {_message(payload)}")
        parsed = json.loads(payload) if payload else {}
        return parsed if isinstance(parsed, dict) else {}


def _message(payload: bytes) -> str:
    try:
        status = json.loads(payload)
    except ValueError:
        return payload[:200].decode(errors="replace")
    return str(status.get("message") or status) if isinstance(status, dict) else str(status)
