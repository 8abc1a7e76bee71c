"""Managed Redis with replicas (``spec.redis.replicas`` > 0): a StatefulSet per shard, Sentinel.

Per shard, a StatefulSet ``<name>-rs<N>`` of 1 + replicas pods behind the shared headless
Service ``<name>-redis``. Pod 0 of a new shard starts as master and the others replicate it;
after that, Sentinel decides. One Sentinel StatefulSet ``<name>-sent`` (3 pods, quorum 2)
monitors every shard under the master name ``shard-<N>``, which is also the shard's name for
room placement; the relays and the operator's load reader ask the Sentinels for each master.

Roles are decided when a Redis process starts, by ``REDIS_START`` (a shell script run as the
container's command): it asks the Sentinels for the shard's current master and replicates it
unless that is itself; only when no Sentinel answers (a new GameCluster: they start together)
does it fall back to "pod 0 is master". So a pod 0 coming back after a failover joins the
promoted replica as a replica, never as a second master (the usual approach, as in Bitnami's
chart). ``SENTINEL_START`` renders each Sentinel's configuration the same way: the masters
its peers know, else pod 0 of each shard. Both are plain POSIX sh (the Alpine image's
busybox) and take every address from the environment, so tests/integration/test_redis_ha.py
runs exactly this text with real processes on loopback.

Every address is a DNS name (``resolve-hostnames``/``announce-hostnames``, replicas announce
their pod's name): a pod restarted on a new IP is the same instance to Sentinel and to the
relays, so only a real failover changes a shard's master address (the relay's epoch fence).

With ``spec.redis.tls`` every server and Sentinel serves TLS only, replicates over it
(``tls-replication yes``: replicas to masters, Sentinels to servers and to each other) with
the one certificate of the Secret, which must name both headless Services' pods; the
scripts' and probes' redis-cli gets ``REDIS_CLI_TLS`` (``--tls --cacert ...``). Sentinel
hands out the DNS names above, so clients verify the certificate with the hostname checked.

Passwords never reach a command line: the replication password goes to redis-server on
stdin (``redis-server -``), the Sentinel's into its config file in the pod's own emptyDir,
and redis-cli gets the Sentinels' password from ``REDISCLI_AUTH``. The Sentinels require
a password of their own (``requirepass``, ``SENTINEL_AUTH_PASSWORD`` from the Secret key
``sentinelAuthPassword``), which they also give each other; relays, the Redis pods' start
script, the probe and the operator's load reader all log in with it. The key is optional
(``secretKeyRef.optional``): a Secret made before it existed leaves the Sentinels open.
"""

from typing import Any, Final

from gamecluster import names
from gamecluster.children import (
    REDIS_PORT,
    SENTINEL_PORT,
    SENTINEL_QUORUM,
    SENTINELS,
    Manifest,
    Owner,
)
from gamecluster.manifests import redis_access, redis_tls, secrets
from gamecluster.manifests.redis import ACL_DIR, REDIS_UID, memory_args, persistence_args
from gamecluster.manifests.redis import statefulset as standalone_statefulset
from gamecluster.manifests.security import container_security_context, pod_security_context
from gamecluster.manifests.template import overlay
from gamecluster.spec import GameClusterSpec

DOWN_AFTER_MILLISECONDS: Final = 5000
"""How long a master must be unreachable before a failover starts: longer than a quick
container restart with its AOF (no failover then), short enough to bound the outage."""
FAILOVER_TIMEOUT_MILLISECONDS: Final = 60000
"""Sentinel's failover-timeout: also the pause before the same master is failed over again."""
SENTINEL_DIR: Final = "/data"
"""The Sentinel's config file (rewritten by Sentinel with what it learns): an emptyDir, so a
container restart keeps it; a new pod starts from its peers' view (SENTINEL_START)."""
SENTINEL_RESOURCES: Final = {
    "requests": {"cpu": "10m", "memory": "16Mi"},
    "limits": {"memory": "64Mi"},
}
"""A Sentinel keeps a few connections per monitored server: small and fixed."""

_ASK_SENTINEL: Final = r"""
# ask HOST:PORT MASTER: "host port" of MASTER's current master as that Sentinel knows it
# (bounded: a Sentinel that does not answer within 3 s is skipped). The Sentinels'
# password, when they have one, goes in REDISCLI_AUTH (never on the command line), and
# never a Redis user's password (the container's own REDISCLI_AUTH is dropped).
# REDIS_CLI_TLS: redis-cli's TLS flags, empty without TLS (split into words on purpose).
ask() {
  if [ -n "${SENTINEL_AUTH_PASSWORD:-}" ]; then
    reply=$(REDISCLI_AUTH="$SENTINEL_AUTH_PASSWORD" timeout 3 redis-cli ${REDIS_CLI_TLS:-} \
      -h "${1%:*}" -p "${1##*:}" --raw SENTINEL get-master-addr-by-name "$2" 2>/dev/null) \
      || return 1
  else
    reply=$(env -u REDISCLI_AUTH timeout 3 redis-cli ${REDIS_CLI_TLS:-} -h "${1%:*}" \
      -p "${1##*:}" --raw SENTINEL get-master-addr-by-name "$2" 2>/dev/null) || return 1
  fi
  host=$(echo "$reply" | sed -n 1p)
  port=$(echo "$reply" | sed -n 2p)
  case "$port" in ''|*[!0-9]*) return 1 ;; esac
  echo "$host $port"
}
"""

REDIS_START: Final = (
    r"""set -eu
# Start one Redis of a shard with replicas, as master or as replica of the current master.
# Environment: POD_NAME (ordinal suffix), REDIS_HOST/REDIS_PORT (this pod's address),
# REDIS_SHARD (Sentinel master name), REDIS_MASTER0 ("host port" of pod 0),
# REDIS_SENTINELS ("host:port ..."), REDIS_REPLICATION_PASSWORD, SENTINEL_AUTH_PASSWORD
# (optional), REDIS_TLS and REDIS_CLI_TLS (optional); "$@": redis-server options.
"""
    + _ASK_SENTINEL
    + r"""
master=""
for sentinel in $REDIS_SENTINELS; do
  if master=$(ask "$sentinel" "$REDIS_SHARD"); then break; fi
  master=""
done
if [ -n "$master" ]; then
  echo "Sentinel names $master as the master of $REDIS_SHARD"
elif [ "${POD_NAME##*-}" = 0 ]; then
  # No Sentinel knows the shard (it is new): pod 0 starts as its master.
  master="$REDIS_HOST $REDIS_PORT"
  echo "no Sentinel answered for $REDIS_SHARD: pod 0 starts as master"
else
  master="$REDIS_MASTER0"
  echo "no Sentinel answered for $REDIS_SHARD: replicating pod 0"
fi
role=""
if [ "$master" != "$REDIS_HOST $REDIS_PORT" ]; then role="replicaof $master"; fi
# REDIS_TLS: TLS only on REDIS_PORT (the certificate options are in "$@").
listen="port $REDIS_PORT"
if [ -n "${REDIS_TLS:-}" ]; then listen="port 0
tls-port $REDIS_PORT"; fi
exec redis-server - "$@" <<EOF
$listen
replica-announce-ip $REDIS_HOST
replica-announce-port $REDIS_PORT
masteruser """
    + secrets.REPLICATION_USER
    + r"""
masterauth $REDIS_REPLICATION_PASSWORD
$role
EOF
"""
)

SENTINEL_START: Final = (
    r"""set -eu
# Start one Sentinel monitoring every shard. Environment: SENTINEL_HOST/SENTINEL_PORT (this
# pod), SENTINEL_PEERS ("host:port ..." of all Sentinels), SENTINEL_SHARDS ("name=host:port
# ..." of each shard's pod 0), SENTINEL_QUORUM, SENTINEL_DOWN_AFTER_MS,
# SENTINEL_FAILOVER_TIMEOUT_MS, SENTINEL_DIR, SENTINEL_PASSWORD (to the Redis pods),
# SENTINEL_AUTH_PASSWORD (optional: this Sentinel's own), SENTINEL_TLS (optional: TLS only;
# the certificate options are in "$@"), REDIS_CLI_TLS; "$@": more Sentinel options.
"""
    + _ASK_SENTINEL
    + r"""
umask 077
conf="$SENTINEL_DIR/sentinel.conf"
{
  if [ -n "${SENTINEL_TLS:-}" ]; then
    # TLS only (to the servers and the other Sentinels too: tls-replication in "$@").
    echo "port 0"
    echo "tls-port $SENTINEL_PORT"
  else
    echo "port $SENTINEL_PORT"
  fi
  echo "sentinel resolve-hostnames yes"
  echo "sentinel announce-hostnames yes"
  echo "sentinel announce-ip $SENTINEL_HOST"
  echo "sentinel announce-port $SENTINEL_PORT"
  # Clients must log in; a Sentinel also logs in to its peers with this same password.
  if [ -n "${SENTINEL_AUTH_PASSWORD:-}" ]; then echo "requirepass $SENTINEL_AUTH_PASSWORD"; fi
} > "$conf"
for shard in $SENTINEL_SHARDS; do
  name=${shard%%=*}
  first=${shard#*=}
  master=""
  for peer in $SENTINEL_PEERS; do
    if [ "$peer" = "$SENTINEL_HOST:$SENTINEL_PORT" ]; then continue; fi
    if master=$(ask "$peer" "$name"); then break; fi
    master=""
  done
  # No peer knows the shard (a new one, or every Sentinel restarted): its pod 0.
  if [ -z "$master" ]; then master="${first%:*} ${first##*:}"; fi
  # Sentinel refuses a master whose name does not resolve yet: wait (bounded) for its pod.
  tries=0
  until env -u REDISCLI_AUTH timeout 3 redis-cli ${REDIS_CLI_TLS:-} -h "${master% *}" \
      -p "${master#* }" PING >/dev/null 2>&1 || [ "$tries" -ge 60 ]; do
    tries=$((tries + 1))
    sleep 1
  done
  echo "monitoring $name at $master"
  {
    echo "sentinel monitor $name $master $SENTINEL_QUORUM"
    echo "sentinel auth-user $name """
    + secrets.SENTINEL_USER
    + r""""
    echo "sentinel auth-pass $name $SENTINEL_PASSWORD"
    echo "sentinel down-after-milliseconds $name $SENTINEL_DOWN_AFTER_MS"
    echo "sentinel failover-timeout $name $SENTINEL_FAILOVER_TIMEOUT_MS"
    echo "sentinel parallel-syncs $name 1"
  } >> "$conf"
done
# `redis-server --sentinel`, not `redis-sentinel`: the same program, and every Redis image
# has redis-server, while the redis-sentinel link is missing from some (Debian's
# redis-server package: the real-pod tier's Sentinels crash-looped on "not found").
exec redis-server "$conf" --sentinel "$@"
"""
)


def _env(name: str, value: str) -> dict[str, Any]:
    return {"name": name, "value": value}


def _secret_env(name: str, owner: Owner, key: str, *, optional: bool = False) -> dict[str, Any]:
    ref: dict[str, Any] = {"name": owner.redis_secret, "key": key}
    if optional:
        ref["optional"] = True
    return {"name": name, "valueFrom": {"secretKeyRef": ref}}


def sentinel_auth_env(owner: Owner, name: str = "SENTINEL_AUTH_PASSWORD") -> dict[str, Any]:
    """The Sentinels' password from the generated Secret; optional: a Secret made before
    the key existed leaves the variable unset and the Sentinels open (docs/operator.md)."""
    return _secret_env(name, owner, secrets.SENTINEL_AUTH_PASSWORD_KEY, optional=True)


_POD_NAME: Final = {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}


def _spread(selector: dict[str, str]) -> dict[str, Any]:
    """Prefer one pod of a set per node: a node loss then takes one copy of a shard (or one
    Sentinel). Preferred, not required, so a small cluster still schedules every pod."""
    return {
        "podAntiAffinity": {
            "preferredDuringSchedulingIgnoredDuringExecution": [
                {
                    "weight": 100,
                    "podAffinityTerm": {
                        "labelSelector": {"matchLabels": selector},
                        "topologyKey": "kubernetes.io/hostname",
                    },
                }
            ]
        }
    }


def shard_selector(owner: Owner, shard: int) -> dict[str, str]:
    return {**owner.selector(names.COMPONENT_REDIS), names.LABEL_SHARD: str(shard)}


def tls_args(spec: GameClusterSpec) -> list[str]:
    """With spec.redis.tls, the redis-server and redis-sentinel options for the certificate
    (the ports are the start scripts') and for replication (a Sentinel: its connections to
    servers and peers) over TLS."""
    if spec.redis.tls is None:
        return []
    return [*redis_tls.certificate_args(), "--tls-replication", "yes"]


def redis_args(spec: GameClusterSpec) -> list[str]:
    """redis-server options of every pod of a shard (the script adds the ports and role)."""
    return [
        *tls_args(spec),
        "--dir", "/data",
        *persistence_args(spec),
        "--aclfile", f"{ACL_DIR}/{secrets.ACL_FILE_KEY}",
        "--protected-mode", "yes",
        *memory_args(spec),
    ]  # fmt: skip


def _cli_tls_env(spec: GameClusterSpec) -> list[dict[str, Any]]:
    """REDIS_CLI_TLS for the scripts' and probes' redis-cli (nothing without TLS)."""
    return [] if spec.redis.tls is None else [_env("REDIS_CLI_TLS", redis_tls.cli_flags())]


def _redis_tls_env(spec: GameClusterSpec) -> list[dict[str, Any]]:
    """REDIS_TLS: REDIS_START serves TLS only (nothing without TLS)."""
    return [] if spec.redis.tls is None else [_env("REDIS_TLS", "yes")]


def shard_statefulset(
    spec: GameClusterSpec,
    owner: Owner,
    shard: int,
    credentials_digest: str | None,
    tls_digest: str | None = None,
) -> Manifest:
    """One shard: the standalone StatefulSet's pod (volumes, probes, security, overlay) with
    1 + replicas pods, its own selector and the role-deciding start script.

    ``tls_digest``: manifests.redis_tls.certificate_digest of spec.redis.tls's Secret."""
    sts = standalone_statefulset(spec, owner, credentials_digest, tls_digest)
    sts["metadata"]["name"] = owner.redis_shard(shard)
    sts["metadata"]["labels"][names.LABEL_SHARD] = str(shard)
    sts_spec = sts["spec"]
    sts_spec["replicas"] = 1 + spec.redis.replicas
    # Parallel (as the standalone set): a replica must be recreated even while pod 0 is
    # down, which OrderedReady would not do. A replica of a new shard that starts first
    # retries its master until pod 0 is up.
    selector = shard_selector(owner, shard)
    sts_spec["selector"] = {"matchLabels": selector}
    template = sts_spec["template"]
    template["metadata"]["labels"][names.LABEL_SHARD] = str(shard)
    for claim in sts_spec.get("volumeClaimTemplates", []):
        claim["metadata"]["labels"][names.LABEL_SHARD] = str(shard)
    pod = template["spec"]
    pod.setdefault("affinity", _spread(selector))
    container = pod["containers"][0]
    container["command"] = ["sh", "-c", REDIS_START, "redis-start"]
    container["args"] = redis_args(spec)
    sentinels = " ".join(owner.sentinel_addresses())
    container["env"] = [
        _POD_NAME,
        _env("REDIS_HOST", f"$(POD_NAME).{owner.redis}.{owner.namespace}.svc"),
        _env("REDIS_PORT", str(REDIS_PORT)),
        _env("REDIS_SHARD", owner.shard_master(shard)),
        _env("REDIS_MASTER0", f"{owner.redis_host(shard, 0)} {REDIS_PORT}"),
        _env("REDIS_SENTINELS", sentinels),
        _secret_env("REDIS_REPLICATION_PASSWORD", owner, secrets.REPLICATION_PASSWORD_KEY),
        sentinel_auth_env(owner),
        *_redis_tls_env(spec),
        *_cli_tls_env(spec),
        *container["env"],
    ]
    return sts


def sentinel_service(owner: Owner) -> Manifest:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": owner.metadata(owner.sentinel, names.COMPONENT_SENTINEL),
        "spec": {
            "clusterIP": "None",
            # A Sentinel's name resolves while it starts: its peers and the relays skip it
            # until it answers.
            "publishNotReadyAddresses": True,
            "selector": owner.selector(names.COMPONENT_SENTINEL),
            "ports": [{"name": "sentinel", "port": SENTINEL_PORT, "targetPort": "sentinel"}],
        },
    }


def sentinel_statefulset(
    spec: GameClusterSpec,
    owner: Owner,
    credentials_digest: str | None,
    tls_digest: str | None = None,
) -> Manifest:
    selector = owner.selector(names.COMPONENT_SENTINEL)
    shards = " ".join(
        f"{owner.shard_master(index)}={owner.redis_host(index, 0)}:{REDIS_PORT}"
        for index in range(spec.redis.shards)
    )
    probe = (
        'if [ -n "${SENTINEL_AUTH_PASSWORD:-}" ]; then '
        'export REDISCLI_AUTH="$SENTINEL_AUTH_PASSWORD"; fi; '
        f"redis-cli ${{REDIS_CLI_TLS:-}} -p {SENTINEL_PORT} ping | grep -q PONG"
    )
    tls = spec.redis.tls is not None
    container: dict[str, Any] = {
        "name": "sentinel",
        "image": spec.redis.image,
        "imagePullPolicy": "IfNotPresent",
        "command": ["sh", "-c", SENTINEL_START, "sentinel-start"],
        "env": [
            _POD_NAME,
            _env("SENTINEL_HOST", f"$(POD_NAME).{owner.sentinel}.{owner.namespace}.svc"),
            _env("SENTINEL_PORT", str(SENTINEL_PORT)),
            _env("SENTINEL_PEERS", " ".join(owner.sentinel_addresses())),
            _env("SENTINEL_SHARDS", shards),
            _env("SENTINEL_QUORUM", str(SENTINEL_QUORUM)),
            _env("SENTINEL_DOWN_AFTER_MS", str(DOWN_AFTER_MILLISECONDS)),
            _env("SENTINEL_FAILOVER_TIMEOUT_MS", str(FAILOVER_TIMEOUT_MILLISECONDS)),
            _env("SENTINEL_DIR", SENTINEL_DIR),
            _secret_env("SENTINEL_PASSWORD", owner, secrets.SENTINEL_PASSWORD_KEY),
            sentinel_auth_env(owner),
            *([_env("SENTINEL_TLS", "yes")] if tls else []),
            *_cli_tls_env(spec),
        ],
        "ports": [{"name": "sentinel", "containerPort": SENTINEL_PORT}],
        "readinessProbe": {
            "exec": {"command": ["sh", "-c", probe]},
            "periodSeconds": 5,
            "timeoutSeconds": 2,
        },
        "livenessProbe": {
            "tcpSocket": {"port": "sentinel"},
            "initialDelaySeconds": 5,
            "periodSeconds": 10,
        },
        "resources": SENTINEL_RESOURCES,
        "securityContext": container_security_context(REDIS_UID),
        "volumeMounts": [
            {"name": "data", "mountPath": SENTINEL_DIR},
            *([redis_tls.mount()] if tls else []),
        ],
    }
    if tls:
        # Not an empty list without TLS: the API server drops one, and the drift check
        # would then see a difference on every pass.
        container["args"] = tls_args(spec)
    template: dict[str, Any] = {
        "metadata": {"labels": owner.labels(names.COMPONENT_SENTINEL)},
        "spec": {
            "automountServiceAccountToken": False,
            "enableServiceLinks": False,
            "securityContext": pod_security_context(REDIS_UID),
            "affinity": _spread(selector),
            "containers": [container],
            "volumes": [
                {"name": "data", "emptyDir": {}},
                *([redis_tls.volume(spec)] if tls else []),
            ],
        },
    }
    annotations = {}
    if credentials_digest is not None:
        annotations[redis_access.ANNOTATION_REDIS_CREDENTIALS] = credentials_digest
    if tls and tls_digest is not None:
        annotations[redis_tls.ANNOTATION] = tls_digest  # a renewal rolls the Sentinels too
    if annotations:
        template["metadata"]["annotations"] = annotations
    return {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": owner.metadata(owner.sentinel, names.COMPONENT_SENTINEL),
        "spec": {
            "replicas": SENTINELS,
            "serviceName": owner.sentinel,
            "podManagementPolicy": "Parallel",
            "selector": {"matchLabels": selector},
            # Scheduling (node pools, tolerations) as the Redis pods'; containers differ.
            "template": overlay(template, spec.redis.template),
        },
    }


def sentinel_network_policy(owner: Owner, operator_namespace: str | None) -> Manifest:
    """Only this GameCluster's relay, Redis and Sentinel pods, and the operator's namespace,
    may reach the Sentinels (which also require their password, unless the Secret predates
    it): anyone let in with it could `SENTINEL FAILOVER` a shard."""
    peers: list[dict[str, Any]] = [
        {"podSelector": {"matchLabels": owner.selector(component)}}
        for component in (names.COMPONENT_RELAY, names.COMPONENT_REDIS, names.COMPONENT_SENTINEL)
    ]
    if operator_namespace:
        peers.append(
            {
                "namespaceSelector": {
                    "matchLabels": {redis_access.NAMESPACE_LABEL: operator_namespace}
                }
            }
        )
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": owner.metadata(owner.sentinel, names.COMPONENT_SENTINEL),
        "spec": {
            "podSelector": {"matchLabels": owner.selector(names.COMPONENT_SENTINEL)},
            "policyTypes": ["Ingress"],
            "ingress": [{"from": peers, "ports": [{"protocol": "TCP", "port": SENTINEL_PORT}]}],
        },
    }


def sentinel_disruption_budget(owner: Owner) -> Manifest:
    """One Sentinel down at a time: the other two are still a quorum and a majority."""
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": owner.metadata(owner.sentinel, names.COMPONENT_SENTINEL),
        "spec": {
            "maxUnavailable": 1,
            "selector": {"matchLabels": owner.selector(names.COMPONENT_SENTINEL)},
        },
    }
