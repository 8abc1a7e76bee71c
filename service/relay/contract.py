"""Names the relay shares with whoever deploys it (the operator, the chart, tests).

This is the one relay module the operator may import: environment variable names,
the port, the HTTP paths and the Redis keys of the load report. Keeping them here
means the operator cannot drift from what the relay actually reads.
"""

from typing import Final

HTTP_PORT: Final = 8080
WS_PATH: Final = "/ws"
HEALTH_PATH: Final = "/healthz"
READY_PATH: Final = "/readyz"
METRICS_PATH: Final = "/metrics"

# The admin port: /metrics and the server API, for a ClusterIP Service only (never the
# player-facing one). RELAY_ADMIN_PORT=0 serves them on the player port instead.
ADMIN_PORT_ENV: Final = "RELAY_ADMIN_PORT"
DEFAULT_ADMIN_PORT: Final = 9090
ADMIN_PORT_NAME: Final = "admin"
API_PREFIX: Final = "/api/v1"
OPENAPI_PATH: Final = "/api/v1/openapi.json"
API_DOCS_PATH: Final = "/api/docs"
API_KEY_HEADER: Final = "x-api-key"
"""Header carrying a server API key (RELAY_API_KEYS)."""

ENV_PREFIX: Final = "RELAY_"

# Every setting the relay reads, by environment variable (relay.config: meaning, defaults).
ENV_HOST: Final = "RELAY_HOST"
ENV_PORT: Final = "RELAY_PORT"
ENV_REDIS_URLS: Final = "RELAY_REDIS_URLS"
ENV_NODE_ID: Final = "RELAY_NODE_ID"
ENV_LOG_LEVEL: Final = "RELAY_LOG_LEVEL"
ENV_COMPRESSION: Final = "RELAY_COMPRESSION"
ENV_MAX_MESSAGE_BYTES: Final = "RELAY_MAX_MESSAGE_BYTES"
ENV_MAX_ROOMS_PER_CONNECTION: Final = "RELAY_MAX_ROOMS_PER_CONNECTION"
ENV_PUBLISH_RATE: Final = "RELAY_PUBLISH_RATE"
ENV_PUBLISH_BURST: Final = "RELAY_PUBLISH_BURST"
ENV_OP_RATE: Final = "RELAY_OP_RATE"
ENV_OP_BURST: Final = "RELAY_OP_BURST"
ENV_HANDSHAKE_SECONDS: Final = "RELAY_HANDSHAKE_SECONDS"
ENV_MAX_CONNECTIONS: Final = "RELAY_MAX_CONNECTIONS"
ENV_SEND_QUEUE: Final = "RELAY_SEND_QUEUE"
ENV_DRAIN_SECONDS: Final = "RELAY_DRAIN_SECONDS"
ENV_HEARTBEAT_SECONDS: Final = "RELAY_HEARTBEAT_SECONDS"
ENV_UNSUBSCRIBE_DELAY: Final = "RELAY_UNSUBSCRIBE_DELAY"
ENV_PROBE_INTERVAL: Final = "RELAY_PROBE_INTERVAL"
ENV_PROBE_TIMEOUT: Final = "RELAY_PROBE_TIMEOUT"
ENV_REDIS_TIMEOUT: Final = "RELAY_REDIS_TIMEOUT"
ENV_ROOMS: Final = "RELAY_ROOMS"
ENV_DEDUPE_SECONDS: Final = "RELAY_DEDUPE_SECONDS"
ENV_LOAD_REPORT_SECONDS: Final = "RELAY_LOAD_REPORT_SECONDS"
ENV_AUTH: Final = "RELAY_AUTH"
ENV_JWT_SECRET: Final = "RELAY_JWT_SECRET"
ENV_JWT_PUBLIC_KEY: Final = "RELAY_JWT_PUBLIC_KEY"
ENV_JWT_AUDIENCE: Final = "RELAY_JWT_AUDIENCE"
ENV_JWT_ISSUER: Final = "RELAY_JWT_ISSUER"
ENV_ALLOWED_ORIGINS: Final = "RELAY_ALLOWED_ORIGINS"
ENV_ADMIN_PORT: Final = ADMIN_PORT_ENV
ENV_API_KEYS: Final = "RELAY_API_KEYS"
ENV_PRESENCE_MAX_MEMBERS: Final = "RELAY_PRESENCE_MAX_MEMBERS"

# Load report: each relay pod writes its live connection count to this key (one per
# node id) with a short TTL, so a reader (the operator's autoscaler) sums the fresh ones.
LOAD_REPORT_KEY_PREFIX: Final = "gamecluster:load:"
LOAD_REPORT_KEY_PATTERN: Final = LOAD_REPORT_KEY_PREFIX + "*"
"""Matches every pod's report (SCAN MATCH)."""
LOAD_REPORT_TTL_SECONDS: Final = 15


def load_report_key(node_id: str) -> str:
    """The key one relay server writes its connection count to."""
    return LOAD_REPORT_KEY_PREFIX + node_id


# Shared limits: the relay's settings and the GameCluster CRD bound the same value with these
# (tests/unit/test_crd.py checks the CRD and relay.config against them).
MIN_MAX_MESSAGE_BYTES: Final = 256
MAX_MAX_MESSAGE_BYTES: Final = 16 * 1024 * 1024
