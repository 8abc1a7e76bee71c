"""Leader election with a ``coordination.k8s.io/v1`` Lease, so two replicas never both act.

Why a Lease and not kopf's peering: peering is not leader election. Each kopf instance
announces itself in a KopfPeering object; one with a lower priority pauses while a higher one
is alive, and instances of *equal* priority all pause ("possibly conflicting operators"), so
two replicas of one Deployment (same priority) freeze each other unless each is given a
distinct priority by hand. It also needs the peering CRDs. A Lease is the primitive
client-go's leaderelection (kube-controller-manager, most operators) uses: one holder, renewed
every few seconds, taken over only after it has expired, with optimistic concurrency
(resourceVersion) deciding races. kopf then runs ``standalone`` in the leader only.

Lifecycle (``main.run``):

1. ``acquire()``: try every ``retry_seconds`` until this replica holds the Lease (a standby
   waits here, doing nothing else).
2. Run kopf, and ``hold()`` next to it: renew every ``renew_seconds``.
3. If renewals keep failing until ``duration_seconds`` since the last success, the Lease may
   be someone else's now: ``hold()`` returns, kopf is stopped and the process exits non-zero
   (the kubelet restarts it as a standby). Never two leaders for longer than the clock skew.
4. On a clean stop, ``release()`` empties the holder so the standby takes over at once
   instead of after the Lease expires.
"""

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from kubernetes import client as k8s

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class LeaseConfig:
    name: str
    namespace: str
    identity: str
    duration_seconds: int = 15
    """How long a holder that stopped renewing keeps the Lease (client-go's default)."""
    renew_seconds: float = 5.0
    retry_seconds: float = 2.0


Action = Literal["create", "renew", "take", "wait"]


def decide(lease: Mapping[str, Any] | None, identity: str, now: datetime) -> Action:
    """What to do with the Lease as read (pure): its ``spec`` or None when absent."""
    if lease is None:
        return "create"
    holder = lease.get("holderIdentity")
    if holder == identity:
        return "renew"
    renewed = lease.get("renewTime")
    duration = lease.get("leaseDurationSeconds") or 0
    if not holder or renewed is None or now >= renewed + timedelta(seconds=duration):
        return "take"
    return "wait"


def _now() -> datetime:
    return datetime.now(UTC)


def _micro_time(value: datetime) -> str:
    """metav1.MicroTime: the API server parses exactly six fractional digits."""
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _version(lease: k8s.V1Lease) -> str | None:
    return lease.metadata.resource_version if lease.metadata else None


class LeaseElector:
    def __init__(self, api: k8s.ApiClient, config: LeaseConfig) -> None:
        self._api = k8s.CoordinationV1Api(api)
        self.config = config

    def _spec(self, now: datetime, transitions: int, acquired: datetime | None) -> dict[str, Any]:
        return {
            "holderIdentity": self.config.identity,
            "leaseDurationSeconds": self.config.duration_seconds,
            "acquireTime": _micro_time(acquired or now),
            "renewTime": _micro_time(now),
            "leaseTransitions": transitions,
        }

    def try_hold(self) -> bool:
        """One attempt to acquire or renew; True when this replica holds the Lease now."""
        cfg = self.config
        now = _now()
        try:
            lease = self._api.read_namespaced_lease(cfg.name, cfg.namespace)
        except k8s.ApiException as exc:
            if exc.status != 404:
                logger.warning(
                    "reading Lease %s/%s failed: %s", cfg.namespace, cfg.name, exc.reason
                )
                return False
            lease = None
        spec = None
        if lease is not None and lease.spec is not None:
            spec = {
                "holderIdentity": lease.spec.holder_identity,
                "renewTime": lease.spec.renew_time,
                "leaseDurationSeconds": lease.spec.lease_duration_seconds,
            }
        action = decide(spec if lease is not None else None, cfg.identity, now)
        try:
            if action == "create":
                # Plain dicts: the client's datetime serialisation drops the fraction at .0 s.
                body: Any = {
                    "apiVersion": "coordination.k8s.io/v1",
                    "kind": "Lease",
                    "metadata": {"name": cfg.name, "namespace": cfg.namespace},
                    "spec": self._spec(now, 0, None),
                }
                self._api.create_namespaced_lease(cfg.namespace, body)
            elif action in ("renew", "take") and lease is not None:
                transitions = (lease.spec.lease_transitions or 0) if lease.spec else 0
                acquired = lease.spec.acquire_time if action == "renew" and lease.spec else None
                body = {
                    "apiVersion": "coordination.k8s.io/v1",
                    "kind": "Lease",
                    "metadata": {
                        "name": cfg.name,
                        "namespace": cfg.namespace,
                        "resourceVersion": _version(lease),
                    },
                    "spec": self._spec(now, transitions + (1 if action == "take" else 0), acquired),
                }
                self._api.replace_namespaced_lease(cfg.name, cfg.namespace, body)
                if action == "take":
                    logger.info("took over Lease %s/%s", cfg.namespace, cfg.name)
            else:
                return False
        except k8s.ApiException as exc:  # 409: another replica won this round
            logger.info(
                "Lease %s/%s: %s lost a race (%s)", cfg.namespace, cfg.name, action, exc.status
            )
            return False
        return True

    async def acquire(self) -> None:
        """Return once this replica is the leader (a standby waits here)."""
        logged = False
        while not await asyncio.to_thread(self.try_hold):
            if not logged:
                logger.info(
                    "standing by: Lease %s/%s is held by another replica",
                    self.config.namespace,
                    self.config.name,
                )
                logged = True
            await asyncio.sleep(self.config.retry_seconds)
        logger.info("leading as %s", self.config.identity)

    async def hold(self) -> None:
        """Renew until renewals have failed for a whole lease duration; then return (lost)."""
        last_success = asyncio.get_running_loop().time()
        while True:
            await asyncio.sleep(self.config.renew_seconds)
            if await asyncio.to_thread(self.try_hold):
                last_success = asyncio.get_running_loop().time()
            elif asyncio.get_running_loop().time() - last_success >= self.config.duration_seconds:
                logger.error("lost Lease %s/%s", self.config.namespace, self.config.name)
                return

    def release(self) -> None:
        """Give the Lease up (holder emptied) so a standby need not wait for it to expire."""
        cfg = self.config
        try:
            lease = self._api.read_namespaced_lease(cfg.name, cfg.namespace)
            if lease.spec is None or lease.spec.holder_identity != cfg.identity:
                return
            body: Any = {
                "apiVersion": "coordination.k8s.io/v1",
                "kind": "Lease",
                "metadata": {
                    "name": cfg.name,
                    "namespace": cfg.namespace,
                    "resourceVersion": _version(lease),
                },
                "spec": {
                    "holderIdentity": None,
                    "leaseDurationSeconds": 1,
                    "leaseTransitions": lease.spec.lease_transitions or 0,
                },
            }
            self._api.replace_namespaced_lease(cfg.name, cfg.namespace, body)
        except k8s.ApiException as exc:
            logger.info("releasing Lease %s/%s failed: %s", cfg.namespace, cfg.name, exc.reason)
