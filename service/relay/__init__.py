"""GameCluster relay: WebSocket rooms shared across pods through Redis."""

__version__ = "0.1.0"
