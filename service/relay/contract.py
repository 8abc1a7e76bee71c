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
ENV_REDIS_SENTINELS: Final = "RELAY_REDIS_SENTINELS"
ENV_REDIS_CLUSTER: Final = "RELAY_REDIS_CLUSTER"
ENV_REDIS_USERNAME: Final = "RELAY_REDIS_USERNAME"
ENV_REDIS_PASSWORD: Final = "RELAY_REDIS_PASSWORD"
ENV_REDIS_PASSWORD_FILE: Final = "RELAY_REDIS_PASSWORD_FILE"
ENV_REDIS_CA_FILE: Final = "RELAY_REDIS_CA_FILE"
ENV_REDIS_SENTINEL_USERNAME: Final = "RELAY_REDIS_SENTINEL_USERNAME"
ENV_REDIS_SENTINEL_PASSWORD: Final = "RELAY_REDIS_SENTINEL_PASSWORD"
ENV_REDIS_SENTINEL_PASSWORD_FILE: Final = "RELAY_REDIS_SENTINEL_PASSWORD_FILE"
ENV_REDIS_SENTINEL_TLS: Final = "RELAY_REDIS_SENTINEL_TLS"
ENV_NODE_ID: Final = "RELAY_NODE_ID"
ENV_LOG_LEVEL: Final = "RELAY_LOG_LEVEL"
ENV_CORE: Final = "RELAY_CORE"
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
ENV_REDIS_ACK_REPLICAS: Final = "RELAY_REDIS_ACK_REPLICAS"
ENV_REDIS_ACK_TIMEOUT: Final = "RELAY_REDIS_ACK_TIMEOUT"
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
# The Downward API names tracing reads (k8s.pod.name / k8s.namespace.name on every span).
ENV_POD_NAME: Final = "POD_NAME"
ENV_POD_NAMESPACE: Final = "POD_NAMESPACE"

# Every name the relay uses in Redis starts with one of these prefixes (relay.broker.keys
# spells the names from them). The ACL rules below are built from the same prefixes, so a
# new key or channel outside them is refused by a managed Redis: add its prefix here.
ROOM_PREFIX: Final = "room:{"
"""A room's channel and keys: `room:{<room>}...` (the braces are a Redis hash tag)."""
NODE_CHANNEL_PREFIX: Final = "relay:"
"""Channels between relay servers: `relay:node:<id>` (the Pub/Sub self-probe), `relay:...`."""
CLUSTER_KEY_PREFIX: Final = "gamecluster:"
"""Keys about the cluster rather than a room: load reports, node reports."""

# Load report: each relay pod writes its live connection count to this key (one per
# node id) with a short TTL, so a reader (the operator's autoscaler) sums the fresh ones.
LOAD_REPORT_KEY_PREFIX: Final = CLUSTER_KEY_PREFIX + "load:"
LOAD_REPORT_KEY_PATTERN: Final = LOAD_REPORT_KEY_PREFIX + "*"
"""Matches every pod's report (SCAN MATCH)."""
LOAD_REPORT_TTL_SECONDS: Final = 15
CLUSTER_HASH_TAG: Final = "{gamecluster}"
"""Redis Cluster (RELAY_REDIS_CLUSTER): every key about the cluster of relay servers
carries this hash tag, so they share one slot (one node): the node report's transaction,
and the operator's MGET of every pod's load report, need that."""


def load_report_key(node_id: str, *, cluster: bool = False) -> str:
    """The key one relay server writes its connection count to (`cluster`: in the
    cluster keys' slot of a Redis Cluster)."""
    return LOAD_REPORT_KEY_PREFIX + (f"{CLUSTER_HASH_TAG}:" if cluster else "") + node_id


# Redis ACL users. A managed Redis runs with the default user off and exactly these two
# users; an external Redis should grant the same (docs/operations.md shows the commands).
RELAY_REDIS_USER: Final = "relay"
OPERATOR_REDIS_USER: Final = "gamecluster-operator"

RELAY_REDIS_COMMANDS: Final = (
    # Lua scripts (relay.broker.lua) and what they call. The publish connection
    # (relay.broker.commands) and redis-py (history) send EVALSHA and, when Redis answers
    # NOSCRIPT (a restarted or new server), SCRIPT LOAD; never EVAL.
    "evalsha", "script|load",
    "get", "set", "hget", "hset", "hsetnx", "hincrby", "xadd", "xrange", "expire",
    # Live fan-out and the Pub/Sub self-probe (a PUBLISH on the node channel, not PING).
    "publish", "subscribe", "unsubscribe",
    # Cluster reports and presence (node reports, member hashes, the alive set); MULTI/EXEC
    # are redis-py's transactional pipelines (never WATCHed, so never DISCARD).
    "multi", "exec", "del", "mget",
    "hdel", "hlen", "hvals", "hscan", "hgetall",
    "sadd", "srem", "smembers", "zadd", "zrange", "zrangebyscore", "zrem",
    # After a failover: every room's meta hash gets a new epoch (SCAN MATCH, HSET); the
    # history marker is checked against the master's replication ids (INFO replication) at
    # every Pub/Sub session of a shard or cluster node (relay.broker.history).
    "scan", "info",
    # RELAY_REDIS_ACK_REPLICAS: a durable publish waits for replicas (relay.broker.replicas).
    "wait",
)  # fmt: skip
"""Every command the relay sends, directly or from its scripts; all others are refused.
AUTH and HELLO (logging in) need no grant. tests/integration/test_redis_security.py runs
every path as this user and fails on a command missing here or listed here unused."""

RELAY_ACL_RULES: Final = (
    "resetkeys",
    f"~{ROOM_PREFIX}*",
    f"~{CLUSTER_KEY_PREFIX}*",
    "resetchannels",
    f"&{ROOM_PREFIX}*",
    f"&{NODE_CHANNEL_PREFIX}*",
    "-@all",
    *(f"+{command}" for command in RELAY_REDIS_COMMANDS),
)
"""ACL SETUSER rules of the relay user, password excepted: its keys, channels and commands."""

RELAY_REDIS_CLUSTER_COMMANDS: Final = (
    # RELAY_REDIS_CLUSTER=true (relay.broker.slots): room events on shard channels (the
    # scripts' SPUBLISH, the per-node probe), and the slot map.
    "spublish", "ssubscribe", "sunsubscribe", "cluster|slots",
)  # fmt: skip
"""What the relay sends to a Redis Cluster besides RELAY_REDIS_COMMANDS (the control
channel stays a PUBLISH/SUBSCRIBE: a PUBLISH reaches every node of a cluster)."""

RELAY_CLUSTER_ACL_RULES: Final = (
    *RELAY_ACL_RULES,
    *(f"+{command}" for command in RELAY_REDIS_CLUSTER_COMMANDS),
)
"""ACL SETUSER rules of the relay user on every node of an external Redis Cluster
(docs/operations.md, "Redis Cluster"); tests/integration/test_redis_cluster.py runs the
relay as a user with exactly these."""

OPERATOR_ACL_RULES: Final = (
    "resetkeys",
    f"%R~{LOAD_REPORT_KEY_PATTERN}",
    "resetchannels",
    "-@all",
    "+mget",
    "+ping",
)
"""ACL SETUSER rules of the operator's user: read the load reports, nothing else."""

# Shared limits: the relay's settings and the GameCluster CRD bound the same value with these
# (tests/unit/test_crd.py checks the CRD and relay.config against them).
MIN_MAX_MESSAGE_BYTES: Final = 256
MAX_MAX_MESSAGE_BYTES: Final = 16 * 1024 * 1024
