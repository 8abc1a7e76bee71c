"""Names the relay shares with whoever deploys it (the operator, the chart, tests).

This is the one relay module the operator may import: environment variable names,
the port, the HTTP paths and the Redis key of the load report. Keeping them here
means the operator cannot drift from what the relay actually reads.
"""

from typing import Final

HTTP_PORT: Final = 8080
WS_PATH: Final = "/ws"
HEALTH_PATH: Final = "/healthz"
READY_PATH: Final = "/readyz"
METRICS_PATH: Final = "/metrics"

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
ENV_MAX_CONNECTIONS: Final = "RELAY_MAX_CONNECTIONS"
ENV_SEND_QUEUE: Final = "RELAY_SEND_QUEUE"
ENV_DRAIN_SECONDS: Final = "RELAY_DRAIN_SECONDS"
ENV_ROOMS: Final = "RELAY_ROOMS"
ENV_DEDUPE_SECONDS: Final = "RELAY_DEDUPE_SECONDS"
ENV_LOAD_REPORT_SECONDS: Final = "RELAY_LOAD_REPORT_SECONDS"
ENV_AUTH: Final = "RELAY_AUTH"
ENV_JWT_SECRET: Final = "RELAY_JWT_SECRET"
ENV_JWT_PUBLIC_KEY: Final = "RELAY_JWT_PUBLIC_KEY"
ENV_JWT_AUDIENCE: Final = "RELAY_JWT_AUDIENCE"
ENV_JWT_ISSUER: Final = "RELAY_JWT_ISSUER"
ENV_ALLOWED_ORIGINS: Final = "RELAY_ALLOWED_ORIGINS"

# Load report: each relay pod writes its live connection count to this key (one per
# node id) with a short TTL, so a reader (the operator's autoscaler) sums the fresh ones.
LOAD_REPORT_KEY_PREFIX: Final = "gamecluster:load:"
LOAD_REPORT_TTL_SECONDS: Final = 15

# Admin port (HELPERS contract): /metrics and the server API, never on the player port.
# The operator exposes it only through a ClusterIP Service; 0 serves the admin routes on the
# player port (tests, laptops).
ADMIN_PORT_ENV: Final = "RELAY_ADMIN_PORT"
DEFAULT_ADMIN_PORT: Final = 9090
ADMIN_PORT_NAME: Final = "admin"

# Shared limits: the relay's settings and the GameCluster CRD bound the same value with these
# (tests/unit/test_crd.py checks the CRD and relay.config against them).
MIN_MAX_MESSAGE_BYTES: Final = 256
MAX_MAX_MESSAGE_BYTES: Final = 16 * 1024 * 1024
