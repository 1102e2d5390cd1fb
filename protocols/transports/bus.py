"""The `Bus` interface: what every transport offers the agent and the control plane.

Two adapters implement it: `NatsBus` (nats-py, JetStream) and `MqttBus` (paho-mqtt, MQTT 3.1.1).
Callers address everything through `protocols.subjects` (`Channel`, `StateKey`); the adapter
picks its own spelling. One contract suite (tests/integration/test_bus_contract.py) runs against
every adapter and broker.

Contract:
- `publish` is at-least-once on MQTT (QoS1) and at-most-once on core NATS; it never blocks on the
  broker being away (messages queue in the client while it reconnects).
- `publish_durable` returns only once the broker has persisted the message (JetStream PubAck /
  MQTT PUBACK); `msg_id` deduplicates retries where the broker can (JetStream).
- `watch_state` yields the latest value of every matching key first, then every later change; a
  deleted key yields `payload=None`. After a reconnect a watcher sees the latest value, not the
  missed history.
- Everything a transport does not offer by design lives on the adapter only (request/reply and
  the object store on NATS), never as a stub here.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from dataclasses import dataclass
from types import TracebackType
from typing import Self

from protocols.identifiers import StateKind
from protocols.subjects import Channel, StateKey


@dataclass(frozen=True, slots=True)
class Delivery:
    """One received message; `address` is the concrete subject/topic in the transport's spelling."""

    address: str
    payload: bytes


@dataclass(frozen=True, slots=True)
class StateUpdate:
    """One twin value seen by a watcher; `payload` is None when the key was deleted."""

    key: StateKey
    payload: bytes | None
    revision: int | None = None


class Subscription(ABC):
    """A live subscription: iterate it for deliveries, close it (or leave the `async with`)."""

    @abstractmethod
    def __aiter__(self) -> AsyncIterator[Delivery]: ...

    @abstractmethod
    async def close(self) -> None: ...

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()


class StateWatch(ABC):
    """A live watch over twin keys: latest values first, then updates."""

    @abstractmethod
    def __aiter__(self) -> AsyncIterator[StateUpdate]: ...

    @abstractmethod
    async def close(self) -> None: ...

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()


class Bus(ABC):
    """A connection to the fabric's broker; use as `async with SomeBus(...) as bus:`."""

    transport: str

    @abstractmethod
    async def connect(self) -> None:
        """Connect, or raise `BusConnectionError` if the broker cannot be reached in time."""

    @abstractmethod
    async def close(self) -> None:
        """Flush what is pending and disconnect."""

    @property
    @abstractmethod
    def is_connected(self) -> bool: ...

    @abstractmethod
    async def wait_connected(self, timeout_s: float) -> None:
        """Return once connected (e.g. after a broker restart), else raise `BusConnectionError`."""

    @abstractmethod
    async def publish(self, channel: Channel, payload: bytes) -> None:
        """Send one message (see module contract)."""

    @abstractmethod
    async def publish_durable(
        self, channel: Channel, payload: bytes, *, msg_id: str, timeout_s: float = 5.0
    ) -> None:
        """Send one message and wait until the broker has persisted it."""

    @abstractmethod
    async def subscribe(self, channel: Channel) -> Subscription:
        """Subscribe to a channel or pattern; returns once the broker has the subscription
        (a message published after this call returns is delivered). Deliveries queue until iterated.
        """

    @abstractmethod
    async def put_state(self, key: StateKey, payload: bytes, *, timeout_s: float = 5.0) -> None:
        """Replace a twin value (persisted: KV put or retained QoS1 publish)."""

    @abstractmethod
    async def delete_state(self, key: StateKey, *, timeout_s: float = 5.0) -> None:
        """Remove a twin value; watchers see `payload=None`."""

    @abstractmethod
    async def watch_state(self, kind: StateKind, device_id: str | None = None) -> StateWatch:
        """Watch one device's twin half, or (None) every device's."""

    async def __aenter__(self) -> Self:
        await self.connect()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()
