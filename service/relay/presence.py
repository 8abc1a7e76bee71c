"""Presence: who is in a room, across every relay server (docs/protocol.md, presence).

Only rooms whose policy says `presence: true`. The hub tells this module when a local
connection enters or leaves such a room; changes are coalesced for `COALESCE_SECONDS`
per room (a join and a leave of the same connection within the window cancel out),
then written to the cluster state (relay.cluster) and sent as one control message to
every relay server, which pushes one `presence` message to each of its local members
of the room. So 1,000 players joining a lobby within a window cost each member one
message, not 1,000.

Bounds: pending changes are at most one per local membership (a connection is either
joining or leaving a room); a control message carries at most `MAX_CHANGES` entries
(more go in several). Members of a relay server that died without leaving are removed
by a surviving server once the dead one has not renewed its liveness for
`dead_after` seconds (3 load-report intervals), and their leaves are sent once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Final, Protocol, runtime_checkable

from relay import control, protocol
from relay.auth import Identity
from relay.broker import Broker, BrokerUnavailable
from relay.cluster import ClusterState, Member
from relay.rooms import RoomPolicies

log = logging.getLogger("relay.presence")

COALESCE_SECONDS: Final = 0.1
"""How long a room's joins and leaves are gathered before they are announced."""
RETRY_SECONDS: Final = 1.0
"""Pause before a failed presence write is tried again."""
MAX_CHANGES: Final = 500
"""Joins + leaves per control message; a larger batch is split."""
MAX_INFO_BYTES: Final = 1024
"""A token's `info` claim larger than this (encoded) is left out of its member entry."""


@runtime_checkable
class Participant(Protocol):
    """What presence reads of a connection (relay.session.Session)."""

    id: str
    identity: Identity

    def push(self, payload: bytes) -> None: ...


def member_of(node: str, participant: Participant) -> Member:
    member: Member = {
        "sub": participant.identity.subject or "",
        "conn": participant.id,
        "node": node,
    }
    info = getattr(participant.identity, "info", None)
    if info is not None and len(protocol.encode({"i": info})) <= MAX_INFO_BYTES:
        member["info"] = info
    return member


class Presence:
    def __init__(
        self,
        node: str,
        state: ClusterState,
        broker: Broker,
        policies: RoomPolicies,
        *,
        max_members: int,
        dead_after: float,
    ) -> None:
        self._node = node
        self._state = state
        self._broker = broker
        self._policies = policies
        self.max_members = max_members
        self.dead_after = dead_after
        self._local: dict[str, dict[str, Participant]] = {}
        self._joins: dict[str, dict[str, Member]] = {}
        self._leaves: dict[str, dict[str, Member]] = {}
        self._flusher: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._registered = False

    # Called by the hub (synchronously, no await).

    def joined(self, room: str, member: object) -> None:
        if not isinstance(member, Participant) or not self._policies.for_room(room).presence:
            return
        self._local.setdefault(room, {})[member.id] = member
        entry = member_of(self._node, member)
        if self._leaves.get(room, {}).pop(member.id, None) is None:
            self._joins.setdefault(room, {})[member.id] = entry
        self._wake.set()

    def left(self, room: str, member: object) -> None:
        if not isinstance(member, Participant):
            return
        local = self._local.get(room)
        if local is None or local.pop(member.id, None) is None:
            return
        if not local:
            del self._local[room]
        if self._joins.get(room, {}).pop(member.id, None) is None:
            self._leaves.setdefault(room, {})[member.id] = member_of(self._node, member)
        self._wake.set()

    # Reads.

    async def members(self, room: str) -> tuple[int, list[Member] | None]:
        """Raises BrokerUnavailable."""
        return await self._state.presence_members(room, self.max_members)

    async def stats(self, room: str) -> tuple[int, int]:
        count, members = await self._state.presence_members(room, 1_000_000)
        return count, len({m["sub"] for m in members or ()})

    def deliver(self, command: control.Command) -> None:
        """A presence control message: push it to this node's members of the room."""
        if command.room is None:
            return
        local = self._local.get(command.room)
        if not local:
            return
        payload = protocol.presence(command.room, command.joins, command.leaves)
        for participant in local.values():
            participant.push(payload)

    # Lifecycle.

    def start(self) -> None:
        self._flusher = asyncio.create_task(self._flush_forever(), name="presence flush")

    async def stop(self) -> None:
        # 1. Announce what is pending (the sessions left while draining), bounded.
        with contextlib.suppress(TimeoutError, BrokerUnavailable):
            await asyncio.wait_for(self.flush(), 2.0)
        # 2. Stop the flusher, and stop being watched for liveness.
        if self._flusher is not None:
            self._flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flusher
        with contextlib.suppress(BrokerUnavailable, TimeoutError):
            await asyncio.wait_for(self._state.forget(self._node), 2.0)

    async def moved(self, rooms: list[str]) -> None:
        """A shard switch moved these rooms: write this node's members of them on their
        new shard (the old shard's copy is deleted by the switch). Raises
        BrokerUnavailable; the switch waits and calls again."""
        for room in rooms:
            local = self._local.get(room)
            if local:
                joins = [member_of(self._node, p) for p in local.values()]
                await self._state.presence_apply(room, joins, [], False)

    async def tick(self) -> None:
        """Each load-report interval: renew liveness; announce the leaves of dead nodes."""
        known = await self._state.alive(self._node)
        if not known and self._registered:
            # Declared dead while alive (a long Redis outage): our members were removed
            # (and their leaves announced). Written and announced again by the flusher,
            # which retries until it can: a write refused now (the shard map's lease ends
            # with such a renewal until the map is read again) is not lost.
            log.warning("this node's presence had expired; writing its members again")
            for room, local in self._local.items():
                pending = self._joins.setdefault(room, {})
                for participant in local.values():
                    pending.setdefault(participant.id, member_of(self._node, participant))
            self._wake.set()
        self._registered = True
        for room, leaves in await self._state.reap(self.dead_after):
            if leaves:
                log.info("%d members of a dead node left %s", len(leaves), room)
                await self._announce(room, [], leaves)

    async def flush(self) -> bool:
        """Write and announce every pending change (one message per room, split if large).

        False when the broker failed: the changes not written are pending again (merged
        with what came meanwhile) and the next flush retries them; nothing is dropped.
        """
        joins, self._joins = self._joins, {}
        leaves, self._leaves = self._leaves, {}
        ok = True
        for room in set(joins) | set(leaves):
            room_joins = joins.get(room, {})
            room_leaves = leaves.get(room, {})
            try:
                await self._state.presence_apply(
                    room,
                    list(room_joins.values()),
                    list(room_leaves),
                    room not in self._local,
                )
            except BrokerUnavailable as exc:
                if ok:
                    log.warning("presence of %s not written, will retry: %s", room, exc)
                ok = False
                self._pend_again(room, room_joins, room_leaves)
                continue
            try:
                await self._announce(room, list(room_joins.values()), list(room_leaves.values()))
            except BrokerUnavailable as exc:
                # Stored but not announced: members see it in the next `presence` reply.
                log.warning("presence changes of %s stored but not announced: %s", room, exc)
                ok = False
        return ok

    def _pend_again(self, room: str, joins: dict[str, Member], leaves: dict[str, Member]) -> None:
        """Put back changes a failed flush did not write; a newer opposite change of the
        same connection cancels the old one (neither reached the store)."""
        pending_joins = self._joins.setdefault(room, {})
        pending_leaves = self._leaves.setdefault(room, {})
        for conn, member in joins.items():
            if pending_leaves.pop(conn, None) is None:
                pending_joins.setdefault(conn, member)
        for conn, member in leaves.items():
            if pending_joins.pop(conn, None) is None:
                pending_leaves.setdefault(conn, member)
        for pending in (self._joins, self._leaves):
            if not pending[room]:
                del pending[room]

    async def _announce(self, room: str, joins: list[Member], leaves: list[Member]) -> None:
        changes: list[tuple[str, Member]] = [("j", m) for m in joins] + [("l", m) for m in leaves]
        for start in range(0, len(changes), MAX_CHANGES):
            part = changes[start : start + MAX_CHANGES]
            await self._broker.broadcast(
                control.presence(
                    self._node,
                    room,
                    [m for kind, m in part if kind == "j"],
                    [m for kind, m in part if kind == "l"],
                )
            )

    async def _flush_forever(self) -> None:
        while True:
            await self._wake.wait()
            await asyncio.sleep(COALESCE_SECONDS)
            self._wake.clear()
            try:
                ok = await self.flush()
            except Exception:
                log.exception("presence flush failed")
                ok = False
            if not ok:
                self._wake.set()  # retry what is pending again, after a pause
                await asyncio.sleep(RETRY_SECONDS)
