"""What a fleet of a thousand NATS devices needs from the broker and the agent (found by
benchmarks/fleet.py): more than nats-server's default 1,000 consumers per stream, broker refusals that
reach the agent as bus errors, and metadata updates that do not re-fetch the repository's history."""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest

from control_plane.broker import EmbeddedBroker
from edge_agent.sources import NatsArtifactSource
from model_compiler.sample_models import SavedSample, digits_mlp
from model_compiler.signing.release import METADATA_DIRNAME
from model_compiler.signing.repository import init_repository
from protocols import subjects
from protocols.errors import BusError
from protocols.transports.nats_bus import STREAM_MAX_CONSUMERS, NatsBus
from tests.fleet import build_release, sign_and_publish

PROFILE = "cpu-x86_64"
SERVER_DEFAULT_MAX_CONSUMERS = 1000
"""nats-server 2.15 caps every stream that sets no limit of its own at this many consumers."""


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> SavedSample:
    return digits_mlp().save(tmp_path_factory.mktemp("digits"))


async def test_a_thousand_and_first_device_can_watch_its_desired_state(broker: EmbeddedBroker) -> None:
    async with NatsBus(broker.nats_url) as bus:
        await bus.connect()
        await bus.js.create_key_value(bucket=subjects.TWIN_BUCKET)  # as an older control plane made it
        await bus.provision()
        for stream in (f"KV_{subjects.TWIN_BUCKET}", f"OBJ_{subjects.ARTIFACT_BUCKET}", "OBJ_fabric_tuf"):
            assert (await bus.js.stream_info(stream)).config.max_consumers == STREAM_MAX_CONSUMERS
        async with contextlib.AsyncExitStack() as watches:
            for index in range(SERVER_DEFAULT_MAX_CONSUMERS + 1):
                await watches.enter_async_context(await bus.watch_state("desired", f"dev-{index:05}"))


async def test_a_consumer_the_broker_refuses_is_a_bus_error_for_the_agent(
    broker: EmbeddedBroker, tmp_path: Path
) -> None:
    async with NatsBus(broker.nats_url) as bus:
        await bus.connect()
        await bus.provision()
        stream = f"OBJ_{subjects.METADATA_BUCKET}"
        (tmp_path / "timestamp.json").write_text("{}")
        await bus.objects.put_file(subjects.METADATA_BUCKET, "timestamp.json", tmp_path / "timestamp.json")
        config = (await bus.js.stream_info(stream)).config
        config.max_consumers = 1
        await bus.js.update_stream(config)
        await bus.js.add_consumer(stream, durable_name="holds-the-only-place")
        with pytest.raises(BusError, match="consumer"):
            await bus.objects.fetch_to_file(subjects.METADATA_BUCKET, "timestamp.json", tmp_path / "out.json")
        with pytest.raises(BusError, match="consumer"):
            await bus.objects.list_names(subjects.METADATA_BUCKET)


async def test_an_update_fetches_only_the_metadata_that_changed(
    broker: EmbeddedBroker, tmp_path: Path, sample: SavedSample
) -> None:
    repo = tmp_path / "repo"
    init_repository(repo)
    async with NatsBus(broker.nats_url) as bus:
        await bus.connect()
        await bus.provision()
        source = NatsArtifactSource(bus, tmp_path / "mirror")
        trusted_root = (repo / METADATA_DIRNAME / "1.root.json").read_bytes()
        counter = await sign_and_publish(
            bus, repo, build_release(sample, tmp_path / "v1", "1", (PROFILE,)), "digits", "1"
        )
        verifier = await source.verifier(trusted_root, tmp_path / "cache")
        assert verifier.resolve("digits", "1", PROFILE, min_counter=0).target.model_counter == counter
        mirror = tmp_path / "mirror" / METADATA_DIRNAME
        first = {path.name: path.stat().st_ino for path in mirror.iterdir()}

        await sign_and_publish(
            bus, repo, build_release(sample, tmp_path / "v2", "2", (PROFILE,)), "digits", "2"
        )
        verifier = await source.verifier(trusted_root, tmp_path / "cache")

        assert verifier.resolve("digits", "2", PROFILE, min_counter=counter).target.model_counter > counter
        second = {path.name: path.stat().st_ino for path in mirror.iterdir()}
        versioned = [name for name in first if name[0].isdigit()]
        assert versioned and all(second[name] == first[name] for name in versioned)
        assert second["timestamp.json"] != first["timestamp.json"]
        assert set(second) > set(first)
