import asyncio

import pytest

from relay.broker import Delivery
from relay.broker.memory import MemoryBroker
from relay.hub import Hub
from relay.metrics import Metrics

pytestmark = pytest.mark.unit


class Member:
    def __init__(self) -> None:
        self.received: list[bytes] = []

    def push(self, payload: bytes) -> None:
        self.received.append(payload)


class CountingBroker(MemoryBroker):
    def __init__(self) -> None:
        super().__init__("n")
        self.calls: list[str] = []
        self.unsubscribed = asyncio.Event()

    async def subscribe(self, room: str) -> None:
        self.calls.append(f"sub {room}")
        await super().subscribe(room)

    async def unsubscribe(self, room: str) -> None:
        self.calls.append(f"unsub {room}")
        await super().unsubscribe(room)
        self.unsubscribed.set()


async def test_same_bytes_reach_every_member_and_only_members() -> None:
    broker = CountingBroker()
    hub = Hub(broker, Metrics(), unsubscribe_delay=0)
    one, two, other = Member(), Member(), Member()
    await hub.join(one, "r")
    await hub.join(two, "r")
    await hub.join(other, "elsewhere")
    await broker.publish("r", {"x": 1}, ts=0)
    assert one.received == two.received and len(one.received) == 1
    assert one.received[0] is two.received[0]  # encoded once, shared
    assert other.received == []
    assert broker.calls == ["sub r", "sub elsewhere"]


async def test_subscription_is_released_after_the_delay_and_kept_when_rejoined() -> None:
    broker = CountingBroker()
    hub = Hub(broker, Metrics(), unsubscribe_delay=0.05)
    member = Member()
    await hub.join(member, "r")
    hub.leave(member, "r")
    await hub.join(member, "r")  # back within the delay: no churn
    hub.leave(member, "r")
    await asyncio.wait_for(broker.unsubscribed.wait(), 2)
    assert not hub.is_subscribed("r")
    assert broker.calls == ["sub r", "unsub r"]


async def test_concurrent_first_joins_subscribe_once() -> None:
    broker = CountingBroker()
    hub = Hub(broker, Metrics(), unsubscribe_delay=0)
    members = [Member() for _ in range(5)]
    await asyncio.gather(*(hub.join(m, "r") for m in members))
    assert broker.calls == ["sub r"]
    hub.deliver(Delivery("r", b"{}", 0, None, None, "n"))
    assert all(m.received == [b"{}"] for m in members)
