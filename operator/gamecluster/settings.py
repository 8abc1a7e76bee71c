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

    log_level: str = "INFO"
    """GAMECLUSTER_LOG_LEVEL: DEBUG, INFO, WARNING or ERROR."""

    @property
    def namespaces(self) -> list[str]:
        return [ns.strip() for ns in self.watch_namespaces.split(",") if ns.strip()]
