"""Changing a managed Redis's shard count without split-brain: the operator's state machine.

The relays place rooms by the *active shard map* kept in Redis (the relay's
``relay.broker.shardmap``), not by RELAY_REDIS_URLS, which only says which shards a relay
*can* reach. A switch of the map is a barrier over the live relays that aborts if one of
them cannot reach a shard of the new map. So a change of ``spec.redis.shards`` from N to M
goes in stages, recorded in ``status.shards`` so that a restarted operator resumes where
it was (managed shards are the first N of a fixed sequence of names, so counts suffice):

1. ``Rolling``: Redis runs max(N, M) shards and the relays roll onto the union of the two
   lists (the map is still the N shards: nothing moves yet).
2. ``Switching``: once the relay Deployment's rollout is complete, the operator asks a
   relay (``POST /api/v1/shards/switch``) to switch the map to the M shards, then reads
   ``GET /api/v1/shards`` every pass until it is ``stable``. A switch the relays aborted
   (its ``last`` says why: a relay without the new shard, a deadline) leaves the old map;
   the operator goes back to ``Rolling`` and asks again once the rollout is complete and
   its backoff has passed (``retry_delay``: each abort doubles the wait).
3. ``Shrinking`` (M < N only): the map is the M shards; the relays roll onto the M
   shards, and only once that rollout is complete does Redis shrink to M.
4. ``Stable``: active == target.

A spec edit while ``Rolling`` or ``Shrinking`` just re-targets (the map has not moved, or
has finished moving); during ``Switching`` it waits until the switch has ended, since a
switch in flight cannot be cancelled.

Everything here is pure: the reconciler does the I/O (``relay_admin``) and passes in what
it read and the time.
"""

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Final, Literal

from gamecluster import names
from gamecluster.autoscaling import format_time

Phase = Literal["Stable", "Rolling", "Switching", "Shrinking"]
PHASES: Final[tuple[Phase, ...]] = ("Stable", "Rolling", "Switching", "Shrinking")
MESSAGE_MAX: Final = 2048
"""status.shards.message's bound in the CRD (a relay's error text is cut to fit)."""
SWITCH_TIMEOUT_SECONDS: Final = 60.0
"""The relays' bound on a switch: an unfinished prepare phase aborts (and the operator asks
again), a move phase past it is reported stalled."""
RETRY_FIRST_SECONDS: Final = 10.0
RETRY_MAX_SECONDS: Final = 300.0
"""The wait before asking again after an aborted switch: 10 s, doubling per abort, at most
5 min. Every attempt refuses publishes of the moving rooms (``unavailable``) for its
prepare phase, up to SWITCH_TIMEOUT_SECONDS, so a switch that keeps aborting costs those
rooms at most 60 / (60 + 300) = 17 % of the time at the cap (asking at every pass: most of
it). The first waits are short because the usual causes pass by themselves within seconds
(a replaced relay that the barrier counts until its load reports stop, a pod restarting);
the cap bounds how late the switch happens once the cause is fixed. Retries happen at the
first operator pass after the wait (the resync timer, GAMECLUSTER_RESYNC_SECONDS)."""


def retry_delay(attempts: int) -> timedelta:
    """The wait after the ``attempts``-th aborted switch in a row (1: the first)."""
    seconds = RETRY_FIRST_SECONDS * 2 ** min(max(attempts - 1, 0), 16)
    return timedelta(seconds=min(seconds, RETRY_MAX_SECONDS))


@dataclass(frozen=True)
class MapReading:
    """What a relay answered about the active map (``GET /api/v1/shards``)."""

    version: int
    shards: tuple[str, ...]
    phase: str
    """``stable``, ``prepare`` or ``move`` (the relay's phases)."""
    stalled: bool = False
    last: str | None = None
    """How the last switch ended (the relay's words: aborted, and why)."""

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> "MapReading":
        return cls(
            version=int(body["version"]),
            shards=tuple(str(name) for name in body["shards"]),
            phase=str(body["phase"]),
            stalled=bool(body.get("stalled") or False),
            last=body.get("last"),
        )


@dataclass(frozen=True)
class ShardState:
    """``status.shards``: the active map's shard count, the target, and the stage."""

    active: int
    target: int
    phase: Phase = "Stable"
    message: str = ""
    stalled: bool = False
    version: int = 0
    """The active map's version as a relay last reported it (0: not read yet)."""
    draining: int = 0
    """``Shrinking``: the shards Redis still runs until the relays have left the removed
    ones (0 otherwise). Integers, not None: a merge patch would delete a None field."""
    attempts: int = 0
    """Switches to this target the relays aborted in a row (0 once one completes or the
    target changes)."""
    retry_after: datetime | None = None
    """After an abort: no switch is asked before this time (kept in status, so a restarted
    operator keeps the backoff)."""

    @classmethod
    def from_status(cls, status: Mapping[str, Any], *, fallback: int) -> "ShardState":
        """The recorded state, or ``fallback`` shards stable (a new GameCluster, or one made
        by an operator before this state existed: its relays wrote the configured shards
        as the first map)."""
        recorded = status.get("shards")
        if not isinstance(recorded, Mapping) or recorded.get("phase") not in PHASES:
            return cls(active=fallback, target=fallback)
        return cls(
            active=int(recorded["active"]),
            target=int(recorded["target"]),
            phase=recorded["phase"],
            message=str(recorded.get("message") or ""),
            stalled=bool(recorded.get("stalled") or False),
            version=int(recorded.get("mapVersion") or 0),
            draining=int(recorded.get("draining") or 0),
            attempts=int(recorded.get("attempts") or 0),
            retry_after=_parse_time(recorded.get("retryAfter")),
        )

    def to_status(self) -> dict[str, Any]:
        return {
            "active": self.active,
            "target": self.target,
            "phase": self.phase,
            "message": self.message[:MESSAGE_MAX],
            "stalled": self.stalled,
            "mapVersion": self.version,
            "draining": self.draining,
            "attempts": self.attempts,
            # "" rather than None, for the same reason as the integers.
            "retryAfter": format_time(self.retry_after) if self.retry_after else "",
        }

    @property
    def redis_shards(self) -> int:
        """How many shards Redis runs: the union until the relays have left the removed ones."""
        if self.phase == "Shrinking":
            return max(self.draining, self.target)
        return max(self.active, self.target)

    @property
    def relay_shards(self) -> int:
        """How many shards the relays' RELAY_REDIS_URLS lists: the union while the map may
        still name a shard of either list, the target once the map is the target."""
        if self.phase == "Shrinking":
            return self.target
        return max(self.active, self.target)


def begin(state: ShardState, wanted: int) -> ShardState:
    """Before computing the children: take a new ``spec.redis.shards`` into account."""
    if state.phase == "Switching" or wanted == state.target:
        return state
    if wanted == state.active and state.phase == "Rolling":
        # Back to the active map before it moved: nothing to switch, roll back to it.
        return replace(
            state,
            target=wanted,
            phase="Stable",
            message="",
            stalled=False,
            attempts=0,
            retry_after=None,
        )
    # From Shrinking, the shards being drained stop at once: the map has not named them
    # since the switch ended (its cleanup is done), so no room lives there; a relay still
    # listing one only loses a connection it no longer uses.
    union = max(state.active, wanted)
    return ShardState(
        active=state.active,
        target=wanted,
        phase="Rolling",
        message=f"rolling relays onto {union} shards (the map's {state.active} and the "
        f"target {wanted}) before the switch",
        version=state.version,
    )


Action = Literal["switch"] | None


def after_rollout(
    state: ShardState, rolled_out: bool, *, now: datetime
) -> tuple[ShardState, Action]:
    """After the children were applied: whether the relays are ready for the next stage.

    ``Rolling`` after an abort waits for ``retry_after`` (its message already says when)."""
    if not rolled_out:
        return state, None
    if state.phase == "Rolling":
        if state.retry_after is not None and now < state.retry_after:
            return state, None
        message = "switch requested"
        if state.attempts:
            message += f" (attempt {state.attempts + 1})"
        return replace(state, phase="Switching", message=message), "switch"
    if state.phase == "Shrinking":
        return replace(state, phase="Stable", message="", stalled=False, draining=0), None
    return state, None


def after_reading(
    state: ShardState,
    reading: MapReading,
    names_of: Callable[[int], Sequence[str]],
    *,
    now: datetime,
) -> ShardState:
    """``Switching``: what a relay's answer about the map means for the next stage."""
    if state.phase != "Switching":
        return state
    if reading.phase != "stable":
        stalled = reading.stalled
        message = f"the relays are in phase {reading.phase} of switching to map {reading.version}"
        if stalled:
            message += " and past its deadline (a relay has not acked: see the relay logs)"
        return replace(state, message=message, stalled=stalled, version=reading.version)
    if reading.shards == tuple(names_of(state.target)):
        shrinking = state.target < state.active
        return ShardState(
            active=state.target,
            target=state.target,
            phase="Shrinking" if shrinking else "Stable",
            message="rolling relays off the removed shards" if shrinking else "",
            version=reading.version,
            draining=state.redis_shards if shrinking else 0,
        )
    if reading.shards == tuple(names_of(state.active)):
        # Aborted (or not begun: a request whose answer was lost may not have started one;
        # counted all the same, as it cannot be told apart). The old map stays, nothing
        # moved; ask again after the backoff. When first: the message is cut to fit.
        why = reading.last or "the switch did not happen"
        attempts = state.attempts + 1
        delay = retry_delay(attempts)
        retry_after = now + delay
        return replace(
            state,
            phase="Rolling",
            message=(
                f"switch to {state.target} shards did not complete (attempt {attempts}); "
                f"next attempt at {format_time(retry_after)} (in {delay.total_seconds():.0f} s)"
                f": {why}"
            ),
            stalled=False,
            version=reading.version,
            attempts=attempts,
            retry_after=retry_after,
        )
    return replace(
        state,
        message=(
            f"the active map ({', '.join(reading.shards)}) is neither the {state.active} nor "
            f"the {state.target} managed shards: it was switched by hand; switch it to one "
            "of them (relay shards switch)"
        ),
        stalled=True,
        version=reading.version,
    )


def _parse_time(value: object) -> datetime | None:
    """``status.shards.retryAfter`` ("" or unreadable: no backoff)."""
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def rollout_complete(
    deployment: Mapping[str, Any] | None, replicas: int, pods: Sequence[Mapping[str, Any]]
) -> bool:
    """Every relay pod runs the Deployment's latest config, terminating ones included.

    ``pods``: the relay pods as listed. Deployment status counts no terminating pod, but a
    draining one is still a live relay with the old RELAY_REDIS_URLS: a switch started
    then waits on it in its prepare phase (publishes of moving rooms refused) and aborts
    past its deadline, so it is asked only once no pod of an older config is left.
    """
    if deployment is None:
        return False
    meta = deployment.get("metadata") or {}
    status = deployment.get("status") or {}
    template = ((deployment.get("spec") or {}).get("template") or {}).get("metadata") or {}
    config = (template.get("annotations") or {}).get(names.ANNOTATION_CONFIG_HASH)
    return (
        int(status.get("observedGeneration") or 0) >= int(meta.get("generation") or 0)
        and int(status.get("updatedReplicas") or 0) >= replicas
        and int(status.get("replicas") or 0) == replicas
        and int(status.get("availableReplicas") or 0) >= replicas
        and all(
            ((pod.get("metadata") or {}).get("annotations") or {}).get(names.ANNOTATION_CONFIG_HASH)
            == config
            for pod in pods
        )
    )
