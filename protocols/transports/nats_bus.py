"""`Bus` over NATS (nats-py): core pub/sub, request/reply, JetStream KV twins, durable streams.

The only module besides `nats_objects` that imports nats-py. Every nats-py exception that can
reach a caller is wrapped into a `BusError` subtype here.

Invariants:
- Twin state lives in the KV bucket `TWIN_BUCKET`; a watch starts with the latest value per key.
- `publish_durable` sets `Nats-Msg-Id`, so a retry after a lost PubAck is deduplicated by the
  stream's duplicate window.
- The client reconnects forever with `reconnect_wait_s` between tries; publishes made while
  reconnecting are buffered by the client (up to `reconnect_buffer_bytes`).
- With `user_auth` (decentralized JWT auth), the JWT is fetched and the server's nonce signed on
  every connect and reconnect, so a renewed JWT is used on the next reconnect.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import logging
import math
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import nats.errors
import nats.js.errors
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.kv import KV_DEL, KV_MARKER_REASON, KV_OP, KV_PURGE, KeyValue

from protocols import subjects
from protocols.errors import (
    BusConnectionError,
    BusError,
    BusTimeoutError,
    NoRespondersError,
)
from protocols.identifiers import StateKind
from protocols.subjects import Channel, StateKey
from protocols.transports.bus import Bus, Delivery, StateUpdate, StateWatch, Subscription
from protocols.transports.nats_objects import NatsObjects

logger = logging.getLogger(__name__)

ReplyHandler = Callable[[bytes], Awaitable[bytes]]
_KV_PREFIX = f"$KV.{subjects.TWIN_BUCKET}."
_TWIN_STREAM = f"KV_{subjects.TWIN_BUCKET}"
_WATCH_INACTIVE_THRESHOLD_S = 300.0
_EXPIRY_MARKERS = ("MaxAge", "Purge", "Remove")
"""`Nats-Marker-Reason` values of the markers the server writes when it removes a key (2.11+)."""
STREAM_MAX_CONSUMERS = 100_000
"""The consumer limit of the device-facing streams (twin bucket, both object buckets). nats-server
2.15 caps a stream without a limit of its own at 1,000 consumers, and every NATS device holds a
twin watch on the twin bucket and an ordered consumer per Object Store fetch while it installs:
without an explicit limit a fleet stops at about 1,000 devices (benchmarks/fleet.py). The limit
still bounds what devices, which may create consumers on these streams, can make the server hold."""


@dataclass(frozen=True, slots=True)
class UserJwtAuth:
    """NATS decentralized auth without nats-py's `nkeys` dependency: a user JWT and the holder of
    the user's Ed25519 key, which proves possession by signing the server's nonce."""

    jwt: Callable[[], str]
    """The current user JWT; called on every connect (so it may re-read a renewed file)."""
    sign: Callable[[bytes], bytes]
    """The raw 64-byte Ed25519 signature of the given bytes."""


class NatsSubscription(Subscription):
    """A core NATS subscription yielding `Delivery` values."""

    def __init__(self, subscription: Any) -> None:
        self._subscription = subscription

    async def __aiter__(self) -> AsyncIterator[Delivery]:
        async for msg in self._subscription.messages:
            yield Delivery(address=msg.subject, payload=msg.data)

    async def close(self) -> None:
        with contextlib.suppress(nats.errors.Error):
            await self._subscription.unsubscribe()


class NatsStateWatch(StateWatch):
    """A KV watch that survives reconnects.

    Each watcher is an ephemeral push consumer (in memory, no acks) created under a fresh name
    with its key filter in the API subject (`$JS.API.CONSUMER.CREATE.<stream>.<name>.<filter>`),
    so broker grants can limit a device to watching its own keys; nats-py's `kv.watch()` creates
    unnamed consumers, whose filter only the request body carries. The consumer does not outlive
    a server restart, so the bus calls `resume()` after every reconnect and the watch starts a
    fresh watcher (latest value per key again); a gap in the consumer sequence does the same.
    Revisions already yielded for a key are skipped, so a consumer sees each revision at most once
    and never goes backwards.
    """

    def __init__(
        self, js: JetStreamContext, key_filter: str, on_close: Callable[[NatsStateWatch], None]
    ) -> None:
        self._js = js
        self._key_filter = key_filter
        self._on_close = on_close
        self._queue: asyncio.Queue[StateUpdate] = asyncio.Queue()
        self._last_revision: dict[StateKey, int] = {}
        self._watcher: Any = None
        self._next_consumer_seq = 1
        self._resuming: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._next_consumer_seq = 1
        self._watcher = await self._js.subscribe(
            f"{_KV_PREFIX}{self._key_filter}",
            stream=_TWIN_STREAM,
            cb=self._on_entry,
            config=ConsumerConfig(
                name=f"twin-watch-{secrets.token_hex(8)}",
                deliver_policy=DeliverPolicy.LAST_PER_SUBJECT,
                ack_policy=AckPolicy.NONE,
                max_deliver=1,
                inactive_threshold=_WATCH_INACTIVE_THRESHOLD_S,
                mem_storage=True,
                num_replicas=1,
            ),
        )

    async def resume(self) -> None:
        """Replace the watcher (called by the bus after a reconnect, and after a gap)."""
        await self._stop_watcher()
        try:
            await self.start()
        except nats.errors.Error as e:
            logger.warning("re-creating KV watch %s failed: %s", self._key_filter, e)

    async def _on_entry(self, msg: Msg) -> None:
        meta = msg.metadata
        if meta.sequence.consumer != self._next_consumer_seq:
            logger.info("KV watch %s missed deliveries; re-creating it", self._key_filter)
            if self._resuming is None or self._resuming.done():
                self._resuming = asyncio.create_task(self.resume())
            return
        self._next_consumer_seq += 1
        key = subjects.state_key_of(msg.subject.removeprefix(_KV_PREFIX))
        if meta.sequence.stream <= self._last_revision.get(key, 0):
            return
        self._last_revision[key] = meta.sequence.stream
        headers = msg.headers or {}
        deleted = headers.get(KV_OP) in (KV_DEL, KV_PURGE) or headers.get(KV_MARKER_REASON) in _EXPIRY_MARKERS
        self._queue.put_nowait(
            StateUpdate(key=key, payload=None if deleted else bytes(msg.data), revision=meta.sequence.stream)
        )

    async def __aiter__(self) -> AsyncIterator[StateUpdate]:
        while True:
            yield await self._queue.get()

    async def _stop_watcher(self) -> None:
        watcher, self._watcher = self._watcher, None
        if watcher is not None:
            with contextlib.suppress(nats.errors.Error):
                await watcher.unsubscribe()

    async def close(self) -> None:
        self._on_close(self)
        await self._stop_watcher()


class NatsBus(Bus):
    """A NATS connection with JetStream; `objects` fetches artifacts with resume."""

    transport = "nats"

    def __init__(
        self,
        url: str,
        *,
        name: str = "edgefabric",
        credentials_file: str | None = None,
        token: str | None = None,
        user_auth: UserJwtAuth | None = None,
        inbox_prefix: str | None = None,
        connect_timeout_s: float = 5.0,
        request_timeout_s: float = 5.0,
        reconnect_wait_s: float = 0.5,
        reconnect_buffer_bytes: int = 8 * 1024 * 1024,
    ) -> None:
        self.url = url
        self.name = name
        self._credentials_file = credentials_file
        self._token = token
        self._user_auth = user_auth
        self._inbox_prefix = inbox_prefix
        self._connect_timeout_s = connect_timeout_s
        self._request_timeout_s = request_timeout_s
        self._reconnect_wait_s = reconnect_wait_s
        self._reconnect_buffer_bytes = reconnect_buffer_bytes
        self._nc: NatsClient | None = None
        self._js: JetStreamContext | None = None
        self._kv: KeyValue | None = None
        self._objects: NatsObjects | None = None
        self._watches: set[NatsStateWatch] = set()

    @property
    def nc(self) -> NatsClient:
        if self._nc is None:
            raise BusConnectionError(self.url, "not connected; call connect() first")
        return self._nc

    @property
    def js(self) -> JetStreamContext:
        if self._js is None:
            raise BusConnectionError(self.url, "not connected; call connect() first")
        return self._js

    @property
    def objects(self) -> NatsObjects:
        """Object Store access: publish artifacts, fetch them to files with resume."""
        if self._objects is None:
            self._objects = NatsObjects(self.js, request_timeout_s=self._request_timeout_s)
        return self._objects

    @property
    def is_connected(self) -> bool:
        return self._nc is not None and self._nc.is_connected

    async def wait_connected(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while not self.is_connected:
            if time.monotonic() >= deadline:
                raise BusConnectionError(self.url, f"not reconnected within {timeout_s:g} s")
            await asyncio.sleep(0.05)

    async def connect(self) -> None:
        refusals: list[str] = []  # why the server refused the first connect (e.g. an expired JWT)

        async def on_error(e: Exception) -> None:
            if self._nc is None:
                refusals.append(str(e))
            logger.debug("nats client error: %s", e)

        async def on_disconnect() -> None:
            logger.info("disconnected from %s", self.url)

        async def on_reconnect() -> None:
            logger.info("reconnected to %s", self.url)
            for watch in list(self._watches):
                await watch.resume()

        options: dict[str, Any] = {}
        if self._credentials_file:
            options["user_credentials"] = self._credentials_file
        if self._token:
            options["token"] = self._token
        if self._user_auth is not None:
            auth = self._user_auth
            options["user_jwt_cb"] = lambda: auth.jwt().encode()
            options["signature_cb"] = lambda nonce: base64.b64encode(auth.sign(nonce.encode()))
        if self._inbox_prefix is not None:
            options["inbox_prefix"] = self._inbox_prefix
        client = NatsClient()
        try:
            # nats-py retries an unreachable first server forever when reconnects are unlimited,
            # so the first connect is bounded here.
            await asyncio.wait_for(
                client.connect(
                    servers=[self.url],
                    name=self.name,
                    connect_timeout=math.ceil(self._connect_timeout_s),
                    allow_reconnect=True,
                    max_reconnect_attempts=-1,
                    reconnect_time_wait=self._reconnect_wait_s,  # type: ignore[arg-type]  # float works
                    pending_size=self._reconnect_buffer_bytes,
                    # `close()` drains; a subscription nobody reads would hold it for nats-py's 30 s.
                    drain_timeout=5,
                    error_cb=on_error,
                    disconnected_cb=on_disconnect,
                    reconnected_cb=on_reconnect,
                    **options,
                ),
                self._connect_timeout_s,
            )
        except (nats.errors.Error, OSError, TimeoutError) as e:
            with contextlib.suppress(nats.errors.Error):
                await client.close()
            reason = refusals[-1] if refusals else str(e)
            raise BusConnectionError(self.url, reason or type(e).__name__) from e
        self._nc = client
        self._js = self._nc.jetstream(timeout=self._request_timeout_s)

    async def close(self) -> None:
        nc, self._nc, self._js, self._kv, self._objects = self._nc, None, None, None, None
        if nc is not None and not nc.is_closed:
            with contextlib.suppress(nats.errors.Error):
                await nc.drain()

    # --- provisioning (control plane / tests) ---------------------------------------------------

    async def provision(self, *, twin_history: int = 5, telemetry_max_age_s: float = 7 * 24 * 3600) -> None:
        """Create the fabric's KV bucket, object buckets and telemetry stream if missing."""
        try:
            try:
                await self.js.key_value(subjects.TWIN_BUCKET)
            except nats.js.errors.BucketNotFoundError:
                await self.js.create_key_value(bucket=subjects.TWIN_BUCKET, history=twin_history)
            await self._allow_consumers(_TWIN_STREAM)
            for bucket in (subjects.ARTIFACT_BUCKET, subjects.METADATA_BUCKET):
                try:
                    await self.js.object_store(bucket)
                except nats.js.errors.NotFoundError:
                    await self.js.create_object_store(bucket)
                await self._allow_consumers(f"OBJ_{bucket}")
            try:
                await self.js.stream_info(subjects.TELEMETRY_STREAM)
            except nats.js.errors.NotFoundError:
                await self.js.add_stream(
                    name=subjects.TELEMETRY_STREAM,
                    subjects=subjects.telemetry_stream_subjects(),
                    max_age=telemetry_max_age_s,
                    duplicate_window=120.0,
                )
        except nats.errors.TimeoutError as e:
            raise BusTimeoutError("provision", self.url, self._request_timeout_s) from e
        except nats.js.errors.APIError as e:
            raise BusError(f"provisioning JetStream on {self.url} failed: {e}") from e

    async def _allow_consumers(self, stream: str) -> None:
        """Give `stream` `STREAM_MAX_CONSUMERS`. Servers that predate the default cap may refuse to
        change an existing stream's limit; they need no change, so the refusal is only logged."""
        config = (await self.js.stream_info(stream)).config
        if config.max_consumers == STREAM_MAX_CONSUMERS:
            return
        try:
            await self.js.update_stream(dataclasses.replace(config, max_consumers=STREAM_MAX_CONSUMERS))
        except nats.js.errors.BadRequestError as e:
            logger.warning("stream %s keeps its consumer limit %s: %s", stream, config.max_consumers, e)

    # --- messages --------------------------------------------------------------------------------

    async def publish(self, channel: Channel, payload: bytes) -> None:
        _require_concrete(channel)
        try:
            await self.nc.publish(channel.nats, payload)
        except nats.errors.Error as e:
            raise BusConnectionError(self.url, f"publish to {channel.nats}: {e}") from e

    async def publish_durable(
        self, channel: Channel, payload: bytes, *, msg_id: str, timeout_s: float = 5.0
    ) -> None:
        """JetStream publish; retried with the same `Nats-Msg-Id` until `timeout_s` (no duplicates).

        Retrying covers a broker that is reconnecting or whose JetStream is still recovering.
        """
        _require_concrete(channel)
        deadline = time.monotonic() + timeout_s
        while True:
            remaining = deadline - time.monotonic()
            try:
                await self.js.publish(
                    channel.nats,
                    payload,
                    timeout=max(0.05, min(remaining, 1.0)),
                    headers={"Nats-Msg-Id": msg_id},
                )
                return
            except (nats.js.errors.NoStreamResponseError, nats.errors.NoRespondersError) as e:
                if remaining <= 0:
                    raise BusError(f"no JetStream stream captures {channel.nats}") from e
            except (nats.errors.TimeoutError, nats.errors.ConnectionReconnectingError) as e:
                if remaining <= 0:
                    raise BusTimeoutError("durable publish", channel.nats, timeout_s) from e
            except nats.errors.Error as e:
                raise BusConnectionError(self.url, f"durable publish to {channel.nats}: {e}") from e
            await asyncio.sleep(min(0.1, max(0.0, deadline - time.monotonic())))

    async def subscribe(self, channel: Channel) -> NatsSubscription:
        """Subscribe and return once the server has registered the subscription."""
        try:
            subscription = NatsSubscription(await self.nc.subscribe(channel.nats))
            await self.nc.flush(timeout=math.ceil(self._request_timeout_s))  # server has the SUB
            return subscription
        except nats.errors.Error as e:
            raise BusConnectionError(self.url, f"subscribe to {channel.nats}: {e}") from e

    async def request(self, channel: Channel, payload: bytes, *, timeout_s: float = 5.0) -> bytes:
        """Send a request and wait for the one reply (NATS-only: MQTT commands are messages)."""
        _require_concrete(channel)
        try:
            reply: Msg = await self.nc.request(channel.nats, payload, timeout=timeout_s)
        except nats.errors.NoRespondersError as e:
            raise NoRespondersError(channel.nats) from e
        except nats.errors.TimeoutError as e:
            raise BusTimeoutError("request", channel.nats, timeout_s) from e
        except nats.errors.Error as e:
            raise BusConnectionError(self.url, f"request to {channel.nats}: {e}") from e
        return bytes(reply.data)

    async def serve(self, channel: Channel, handler: ReplyHandler) -> NatsSubscription:
        """Answer requests on `channel` (a pattern is allowed) with `handler(payload) -> reply`.

        The handler owns its errors: it should encode failures into its reply. An exception
        escaping it is logged and the requester times out.
        """

        async def on_request(msg: Msg) -> None:
            try:
                reply = await handler(bytes(msg.data))
            except Exception:
                logger.exception("request handler for %s failed", msg.subject)
                return
            if msg.reply:
                await msg.respond(reply)

        try:
            subscription = NatsSubscription(await self.nc.subscribe(channel.nats, cb=on_request))
            await self.nc.flush(timeout=math.ceil(self._request_timeout_s))
            return subscription
        except nats.errors.Error as e:
            raise BusConnectionError(self.url, f"serve {channel.nats}: {e}") from e

    # --- twin state --------------------------------------------------------------------------------

    async def _twins(self) -> KeyValue:
        if self._kv is None:
            try:
                self._kv = await self.js.key_value(subjects.TWIN_BUCKET)
            except nats.js.errors.BucketNotFoundError as e:
                raise BusError(
                    f"KV bucket {subjects.TWIN_BUCKET!r} does not exist on {self.url}; "
                    "the control plane creates it (NatsBus.provision())"
                ) from e
            except nats.errors.TimeoutError as e:
                raise BusTimeoutError("bind KV", subjects.TWIN_BUCKET, self._request_timeout_s) from e
        return self._kv

    async def put_state(self, key: StateKey, payload: bytes, *, timeout_s: float = 5.0) -> None:
        kv = await self._twins()
        try:
            await asyncio.wait_for(kv.put(key.kv_key, payload), timeout_s)
        except (TimeoutError, nats.errors.TimeoutError) as e:
            raise BusTimeoutError("KV put", key.kv_key, timeout_s) from e
        except nats.errors.Error as e:
            raise BusConnectionError(self.url, f"KV put {key.kv_key}: {e}") from e

    async def delete_state(self, key: StateKey, *, timeout_s: float = 5.0) -> None:
        kv = await self._twins()
        try:
            await asyncio.wait_for(kv.delete(key.kv_key), timeout_s)
        except (TimeoutError, nats.errors.TimeoutError) as e:
            raise BusTimeoutError("KV delete", key.kv_key, timeout_s) from e
        except nats.errors.Error as e:
            raise BusConnectionError(self.url, f"KV delete {key.kv_key}: {e}") from e

    async def watch_state(self, kind: StateKind, device_id: str | None = None) -> NatsStateWatch:
        await self._twins()  # a clear error when the bucket is missing
        key_filter = subjects.state_watch_kv(kind, device_id)
        watch = NatsStateWatch(self.js, key_filter, self._watches.discard)
        try:
            await watch.start()
            self._watches.add(watch)
            return watch
        except nats.errors.TimeoutError as e:
            raise BusTimeoutError("KV watch", key_filter, self._request_timeout_s) from e
        except nats.errors.Error as e:
            raise BusConnectionError(self.url, f"KV watch {key_filter}: {e}") from e


def _require_concrete(channel: Channel) -> None:
    if channel.is_pattern:
        raise BusError(f"cannot publish to the pattern {channel.nats}")
