"""A durable JetStream pull consumer: the only control-plane module that talks nats-py directly.

`NatsBus` (protocols) offers no pull consumer, so this adapter reaches through `NatsBus.js` and
wraps every nats-py exception into a `BusError` subtype, as the bus does.

Invariants:
- The consumer is durable and explicitly acknowledged: the server keeps its position, and a message
  that is neither acked nor terminated is redelivered after `ack_wait_s`, whatever happened to the
  process that fetched it.
- `fetch` returns an empty list when nothing arrives within its timeout; it never blocks longer.
- Acks, terms and naks are fire-and-forget publishes: one lost with the connection only causes a
  redelivery, so callers must tolerate a message twice.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import nats.errors
import nats.js.errors
from nats.aio.msg import Msg
from nats.js import api

from protocols.errors import BusConnectionError, BusError, BusTimeoutError
from protocols.transports.nats_bus import NatsBus


@dataclass(frozen=True, slots=True, eq=False)
class StreamMessage:
    """One delivered message; settle it with exactly one of `DurableConsumer.ack`, `term` or `nak`.

    Compared and hashed by identity: each delivery is its own message.
    """

    subject: str
    payload: bytes
    stored_at: datetime
    """When the stream stored it (the server's clock)."""
    pending_after: int
    """Messages in the stream not yet delivered to this consumer when this one was."""
    msg: Msg = field(repr=False)


class DurableConsumer:
    """A named pull consumer on `stream` for `filter_subject`, created on `open` if missing."""

    def __init__(
        self,
        bus: NatsBus,
        *,
        stream: str,
        durable: str,
        filter_subject: str,
        ack_wait_s: float,
        max_ack_pending: int,
        open_timeout_s: float = 10.0,
    ) -> None:
        self._bus = bus
        self._stream = stream
        self._durable = durable
        self._config = api.ConsumerConfig(
            durable_name=durable,
            ack_policy=api.AckPolicy.EXPLICIT,
            deliver_policy=api.DeliverPolicy.ALL,
            filter_subject=filter_subject,
            ack_wait=ack_wait_s,
            max_ack_pending=max_ack_pending,
        )
        self._open_timeout_s = open_timeout_s
        self._subscription: Any = None

    async def open(self) -> None:
        try:
            self._subscription = await asyncio.wait_for(
                self._bus.js.pull_subscribe(
                    self._config.filter_subject or "",
                    durable=self._durable,
                    stream=self._stream,
                    config=self._config,
                ),
                self._open_timeout_s,
            )
        except TimeoutError as e:  # nats.errors.TimeoutError derives from it
            raise BusTimeoutError("open consumer", self._durable, self._open_timeout_s) from e
        except nats.js.errors.NotFoundError as e:
            raise BusError(
                f"stream {self._stream!r} does not exist on {self._bus.url}; NatsBus.provision() creates it"
            ) from e
        except nats.errors.Error as e:
            raise BusConnectionError(self._bus.url, f"consumer {self._durable}: {e}") from e

    async def fetch(self, max_messages: int, timeout_s: float) -> list[StreamMessage]:
        """Up to `max_messages` messages: those available now, else the first to arrive within
        `timeout_s` (and any that came with it); `[]` if none did."""
        if self._subscription is None:
            raise BusConnectionError(self._bus.url, f"consumer {self._durable} is not open")
        try:
            msgs = await self._subscription.fetch(max_messages, timeout=timeout_s)
        except TimeoutError:  # nats.errors.TimeoutError derives from it
            return []
        except nats.errors.Error as e:
            raise BusConnectionError(self._bus.url, f"fetch from {self._durable}: {e}") from e
        delivered = []
        for msg in msgs:
            metadata = msg.metadata
            delivered.append(
                StreamMessage(
                    subject=msg.subject,
                    payload=msg.data,
                    stored_at=metadata.timestamp,
                    pending_after=metadata.num_pending,
                    msg=msg,
                )
            )
        return delivered

    async def ack(self, message: StreamMessage) -> None:
        """Done with it: never deliver it again."""
        await self._settle(message, message.msg.ack())

    async def term(self, message: StreamMessage) -> None:
        """It can never be processed (malformed): never deliver it again."""
        await self._settle(message, message.msg.term())

    async def nak(self, message: StreamMessage, delay_s: float) -> None:
        """Not processed now: deliver it again after `delay_s`."""
        await self._settle(message, message.msg.nak(delay=delay_s))

    async def _settle(self, message: StreamMessage, sending: Awaitable[None]) -> None:
        try:
            await sending
        except nats.errors.Error as e:
            raise BusConnectionError(self._bus.url, f"settling a message of {message.subject}: {e}") from e

    async def close(self) -> None:
        """Stop receiving (the durable consumer and its position stay on the server)."""
        subscription, self._subscription = self._subscription, None
        if subscription is not None:
            with contextlib.suppress(nats.errors.Error, ValueError):
                await subscription.unsubscribe()
