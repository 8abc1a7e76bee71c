"""Operator settings, from GAMECLUSTER_* environment variables only (the chart sets them)."""

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class OperatorSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="GAMECLUSTER_", frozen=True)

    relay_image: str = Field(min_length=1)
    """GAMECLUSTER_RELAY_IMAGE: image of relay pods whose spec.image is absent. The chart sets
    it to the operator's own image, so relay and operator versions move together."""

    watch_namespaces: str = ""
    """GAMECLUSTER_WATCH_NAMESPACES: comma-separated namespaces; empty watches all of them."""

    liveness_port: int = Field(default=8080, ge=1, le=65535)
    """GAMECLUSTER_LIVENESS_PORT: kopf's liveness endpoint, http://HOST:PORT/healthz."""

    liveness_host: str = Field(default="0.0.0.0", min_length=1)
    """GAMECLUSTER_LIVENESS_HOST: the address the liveness endpoint listens on. All addresses
    in a pod (the kubelet probes the pod IP); 127.0.0.1 for an operator run outside the cluster."""

    resync_seconds: float = Field(default=30.0, gt=0, le=3600)
    """GAMECLUSTER_RESYNC_SECONDS: per GameCluster, how often the autoscaler decides, load
    reports are read, and children are checked for drift (Secrets are not watched)."""

    api_timeout_seconds: float = Field(default=30.0, gt=0, le=600)
    """GAMECLUSTER_API_TIMEOUT_SECONDS: bound on each Kubernetes API call of the reconciler."""

    namespace: str = ""
    """GAMECLUSTER_NAMESPACE: the operator's own namespace (the chart: the pod's, from the
    downward API). Each managed Redis's NetworkPolicy admits it, for the load reports; empty
    (an operator outside the cluster): no namespace is admitted besides the relay pods."""

    leader_election: bool = False
    """GAMECLUSTER_LEADER_ELECTION: hold a coordination.k8s.io Lease before acting, so several
    replicas can run (one leads, the others stand by). The chart turns it on."""

    lease_name: str = Field(default="gamecluster-operator", min_length=1, max_length=253)
    """GAMECLUSTER_LEASE_NAME: the Lease's name (one per operator installation)."""

    lease_namespace: str = "default"
    """GAMECLUSTER_LEASE_NAMESPACE: where the Lease lives (the chart: the release namespace)."""

    pod_name: str = ""
    """GAMECLUSTER_POD_NAME: this replica's identity in the Lease (the chart: metadata.name);
    empty: the host name plus a random suffix."""

    metrics_port: int = Field(default=8081, ge=0, le=65535)
    """GAMECLUSTER_METRICS_PORT: the operator's Prometheus metrics, http://HOST:PORT/metrics,
    on the liveness host. 0 turns the endpoint off."""

    log_level: str = "INFO"
    """GAMECLUSTER_LOG_LEVEL: DEBUG, INFO, WARNING or ERROR."""

    @property
    def namespaces(self) -> list[str]:
        return [ns.strip() for ns in self.watch_namespaces.split(",") if ns.strip()]
