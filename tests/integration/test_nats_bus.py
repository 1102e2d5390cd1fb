"""What only the NATS adapter offers: request/reply, stream dedupe, the Object Store fetcher,
and MQTT publishes landing in the same JetStream stream as NATS ones."""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from control_plane.broker import EmbeddedBroker
from protocols import subjects
from protocols.errors import BusTimeoutError, IntegrityError, NoRespondersError, ObjectNotFoundError
from protocols.transports.mqtt_bus import MqttBus
from protocols.transports.nats_bus import NatsBus

BUCKET = subjects.ARTIFACT_BUCKET


@pytest.fixture
async def bus(broker: EmbeddedBroker) -> AsyncIterator[NatsBus]:
    async with NatsBus(broker.nats_url) as connected:
        await connected.provision()
        yield connected


@pytest.fixture
def artifact(tmp_path: Path) -> Path:
    path = tmp_path / "artifact.bin"
    path.write_bytes(os.urandom(3 * 1024 * 1024 + 12345))  # 25 chunks, the last one partial
    return path


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


async def test_request_is_answered_by_the_serving_device(bus: NatsBus, broker: EmbeddedBroker) -> None:
    async with NatsBus(broker.nats_url) as device:

        async def echo(payload: bytes) -> bytes:
            return b"done:" + payload

        async with await device.serve(subjects.commands_for("dev-1"), echo):
            reply = await bus.request(subjects.command("dev-1", "flush_telemetry"), b"now", timeout_s=5)
    assert reply == b"done:now"


async def test_request_to_an_absent_device_fails_fast_with_no_responders(bus: NatsBus) -> None:
    with pytest.raises(NoRespondersError, match="dev-gone"):
        await bus.request(subjects.command("dev-gone", "diagnostics"), b"", timeout_s=5)


async def test_request_to_a_silent_device_times_out(bus: NatsBus, broker: EmbeddedBroker) -> None:
    async with NatsBus(broker.nats_url) as device:

        async def never_answers(payload: bytes) -> bytes:
            await asyncio.sleep(30)
            return b""

        async with await device.serve(subjects.commands_for("dev-1"), never_answers):
            with pytest.raises(BusTimeoutError) as caught:
                await bus.request(subjects.command("dev-1", "diagnostics"), b"", timeout_s=0.3)
    assert caught.value.retryable


async def test_durable_publish_retried_with_same_id_is_stored_once(bus: NatsBus) -> None:
    channel = subjects.telemetry("dev-1")
    for _ in range(3):
        await bus.publish_durable(channel, b"batch", msg_id="batch-42")
    await bus.publish_durable(channel, b"other", msg_id="batch-43")
    info = await bus.js.stream_info(subjects.TELEMETRY_STREAM)
    assert info.state.messages == 2


async def test_mqtt_telemetry_lands_in_the_nats_telemetry_stream(
    bus: NatsBus, broker: EmbeddedBroker
) -> None:
    async with MqttBus(broker.mqtt_url, client_id="mqtt-dev-7") as device:
        await device.publish_durable(subjects.telemetry("mqtt-dev-7"), b'{"n":1}', msg_id="1")
    message = await bus.js.get_last_msg(subjects.TELEMETRY_STREAM, subjects.telemetry("mqtt-dev-7").nats)
    assert message.data == b'{"n":1}'


async def test_fetch_writes_the_whole_object_and_checks_its_digest(
    bus: NatsBus, artifact: Path, tmp_path: Path
) -> None:
    published = await bus.objects.put_file(BUCKET, "model-a", artifact)
    result = await bus.objects.fetch_to_file(
        BUCKET, "model-a", tmp_path / "out" / "model.bin", expected_sha256=sha256_of(artifact)
    )
    assert result.sha256 == published.sha256 == sha256_of(artifact)
    assert (tmp_path / "out" / "model.bin").read_bytes() == artifact.read_bytes()
    assert result.resumed_from_bytes == 0
    assert not (tmp_path / "out" / "model.bin.part").exists()


async def test_interrupted_fetch_resumes_from_where_it_stopped(
    bus: NatsBus, artifact: Path, tmp_path: Path
) -> None:
    await bus.objects.put_file(BUCKET, "model-a", artifact)
    dest = tmp_path / "model.bin"

    class LinkDropped(Exception):
        pass

    def drop_at_half(done: int, total: int) -> None:
        if done > total // 2:
            raise LinkDropped

    with pytest.raises(LinkDropped):
        await bus.objects.fetch_to_file(BUCKET, "model-a", dest, on_progress=drop_at_half)
    partial = (tmp_path / "model.bin.part").stat().st_size
    assert 0 < partial < artifact.stat().st_size and not dest.exists()

    result = await bus.objects.fetch_to_file(BUCKET, "model-a", dest)
    assert result.resumed_from_bytes == partial
    assert dest.read_bytes() == artifact.read_bytes()


async def test_fetch_restarts_when_the_object_was_replaced_since_the_partial(
    bus: NatsBus, artifact: Path, tmp_path: Path
) -> None:
    await bus.objects.put_file(BUCKET, "model-a", artifact)
    dest = tmp_path / "model.bin"

    def drop_early(done: int, total: int) -> None:
        if done > total // 4:
            raise ConnectionAbortedError

    with pytest.raises(ConnectionAbortedError):
        await bus.objects.fetch_to_file(BUCKET, "model-a", dest, on_progress=drop_early)
    replacement = tmp_path / "v2.bin"
    replacement.write_bytes(os.urandom(1024 * 1024))
    await bus.objects.put_file(BUCKET, "model-a", replacement)

    result = await bus.objects.fetch_to_file(BUCKET, "model-a", dest)
    assert result.resumed_from_bytes == 0
    assert dest.read_bytes() == replacement.read_bytes()


async def test_tampered_partial_download_is_rejected_and_discarded(
    bus: NatsBus, artifact: Path, tmp_path: Path
) -> None:
    await bus.objects.put_file(BUCKET, "model-a", artifact)
    dest = tmp_path / "model.bin"

    def drop_at_half(done: int, total: int) -> None:
        if done > total // 2:
            raise ConnectionAbortedError

    with pytest.raises(ConnectionAbortedError):
        await bus.objects.fetch_to_file(BUCKET, "model-a", dest, on_progress=drop_at_half)
    part = tmp_path / "model.bin.part"
    with part.open("r+b") as f:
        f.seek(1000)
        f.write(b"\x00" * 16)

    with pytest.raises(IntegrityError):
        await bus.objects.fetch_to_file(BUCKET, "model-a", dest)
    assert not dest.exists() and not part.exists()
    assert (await bus.objects.fetch_to_file(BUCKET, "model-a", dest)).sha256 == sha256_of(artifact)


async def test_fetch_refuses_an_object_whose_digest_is_not_the_expected_one(
    bus: NatsBus, artifact: Path, tmp_path: Path
) -> None:
    await bus.objects.put_file(BUCKET, "model-a", artifact)
    with pytest.raises(IntegrityError, match="model-a"):
        await bus.objects.fetch_to_file(BUCKET, "model-a", tmp_path / "m.bin", expected_sha256="0" * 64)
    assert not (tmp_path / "m.bin").exists()


async def test_fetch_of_a_missing_object_names_it(bus: NatsBus, tmp_path: Path) -> None:
    with pytest.raises(ObjectNotFoundError, match="nope"):
        await bus.objects.fetch_to_file(BUCKET, "nope", tmp_path / "m.bin")


async def test_state_watch_after_many_revisions_yields_only_the_latest(bus: NatsBus) -> None:
    key = subjects.StateKey("dev-1", "desired")
    for revision in range(20):
        await bus.put_state(key, str(revision).encode())
    async with await bus.watch_state("desired", "dev-1") as watch:
        updates = aiter(watch)
        first = await asyncio.wait_for(anext(updates), 5)
        await bus.put_state(key, b"next")
        second = await asyncio.wait_for(anext(updates), 5)
    assert (first.payload, second.payload) == (b"19", b"next")
