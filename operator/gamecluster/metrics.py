"""The operator's own Prometheus metrics, on a registry of its own (tests build fresh ones).

Served on ``GAMECLUSTER_METRICS_PORT`` by ``main``; the chart exposes that port only inside
the cluster. Label values are bounded sets (pass kinds, CamelCase reasons, directions), never
names of GameClusters or children, so the series count stays fixed however many GameClusters
there are.
"""

from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter


@dataclass
class OperatorMetrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        self.reconciles = Counter(
            "gamecluster_reconciles_total",
            "Reconcile passes, by kind (full: create/update/resume; drift: events and timer).",
            ["kind"],
            registry=self.registry,
        )
        self.errors = Counter(
            "gamecluster_reconcile_errors_total",
            "Passes that ended with a problem, by reason (NameConflict, ApplyFailed, ...).",
            ["reason"],
            registry=self.registry,
        )
        self.scale_decisions = Counter(
            "gamecluster_scale_decisions_total",
            "Autoscaler decisions that changed the relay pod count, by direction (up, down).",
            ["direction"],
            registry=self.registry,
        )
        self.load_unknown = Counter(
            "gamecluster_load_unknown_total",
            "Autoscaler ticks that made no decision because the load could not be read.",
            registry=self.registry,
        )
