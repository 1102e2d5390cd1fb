"""The edge agent end to end, without a control plane: real nats-server, real subprocess agents,
releases compiled, signed and published with the project's own code."""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
import signal
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import msgspec
import numpy as np
import pytest

from control_plane.broker import EmbeddedBroker
from edge_agent.client import AgentClient
from hardware_profiles.runtimes import ExecutionSettings, open_session
from model_compiler.golden import GOLDEN_FILENAME
from model_compiler.sample_models import SavedSample, digits_cnn, digits_mlp
from model_compiler.signing.repository import init_repository
from protocols import subjects
from protocols.codec import device_event_decoder, encode
from protocols.manifest import MANIFEST_FILENAME, ArtifactFile, manifest_decoder
from protocols.messages import RollbackModel, TelemetryBatch
from protocols.transports.nats_bus import NatsBus
from tests.fleet import AgentProcess, build_release, set_desired, sign_and_publish

PROFILE = "cpu-x86_64"


@pytest.fixture(scope="module")
def samples(tmp_path_factory: pytest.TempPathFactory) -> dict[str, SavedSample]:
    base = tmp_path_factory.mktemp("samples")
    return {"1": digits_cnn(seed=0).save(base / "v1"), "2": digits_cnn(seed=1).save(base / "v2")}


@pytest.fixture(scope="module")
def builds(samples: dict[str, SavedSample], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("builds")
    return {
        v: build_release(s, base / f"v{v}", v, (PROFILE, "intel-cpu-openvino")) for v, s in samples.items()
    }


@pytest.fixture
async def bus(broker: EmbeddedBroker) -> AsyncIterator[NatsBus]:
    async with NatsBus(broker.nats_url) as connected:
        await connected.provision()
        yield connected


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    init_repository(tmp_path / "repo")
    return tmp_path / "repo"


@pytest.fixture
def agents(tmp_path: Path) -> Iterator[list[AgentProcess]]:
    started: list[AgentProcess] = []
    yield started
    for agent in started:
        agent.stop()


def nats_agent(
    tmp_path: Path,
    broker: EmbeddedBroker,
    repo: Path,
    agents: list[AgentProcess],
    device_id: str = "dev-1",
    profile: str = PROFILE,
    env: dict[str, str] | None = None,
) -> AgentProcess:
    trusted_root = str(repo / "metadata" / "1.root.json")
    args = ["--nats-url", broker.nats_url, "--trusted-root", trusted_root, "--profile", profile]
    agent = AgentProcess(tmp_path / device_id, device_id, [*args, "--telemetry-interval", "1"], env=env or {})
    agents.append(agent)
    agent.start()
    return agent


async def deploy(
    bus: NatsBus, repo: Path, agent: AgentProcess, build: Path, version: str, *, revision: int
) -> int:
    """Sign and publish `build` as digits `version`, point the agent at it, wait until it serves it."""
    counter = await sign_and_publish(bus, repo, build, "digits", version)
    await set_desired(bus, agent.device_id, revision, "digits", version, counter)
    agent.wait_model("digits", lambda m: m["current_version"] == version, what=f"v{version} active")
    return counter


def expected_logits(build: Path, images: np.ndarray) -> np.ndarray:
    session = open_session(build / PROFILE / "model.onnx", ExecutionSettings(runtime="onnxruntime"))
    return np.concatenate([session.run({"image": images[i : i + 1]})["logits"] for i in range(len(images))])


def images(sample: SavedSample, count: int = 4) -> np.ndarray:
    return np.load(sample.validation_path)["image"][:count]


async def test_deploy_v1_then_v2_serves_each_versions_outputs(
    tmp_path: Path,
    broker: EmbeddedBroker,
    bus: NatsBus,
    repo: Path,
    builds: dict[str, Path],
    samples: dict[str, SavedSample],
    agents: list[AgentProcess],
) -> None:
    agent = nats_agent(tmp_path, broker, repo, agents)
    client = AgentClient(agent.url)
    x = images(samples["1"])
    for revision, version in ((1, "1"), (2, "2")):
        counter = await sign_and_publish(bus, repo, builds[version], "digits", version)
        await set_desired(bus, "dev-1", revision, "digits", version, counter)
        agent.wait_model("digits", lambda m, v=version: m["current_version"] == v, what=f"v{version} active")
        result = client.infer("digits", {"image": x[:1]})
        assert result.model_version == version
        np.testing.assert_allclose(
            result.outputs["logits"], expected_logits(builds[version], x[:1]), atol=1e-4
        )
    model = agent.model("digits")
    assert model is not None
    assert (model["current_version"], model["previous_version"], model["state"]) == ("2", "1", "active")


async def test_refused_updates_keep_v1_serving_and_report_why(
    tmp_path: Path,
    broker: EmbeddedBroker,
    bus: NatsBus,
    repo: Path,
    builds: dict[str, Path],
    samples: dict[str, SavedSample],
    agents: list[AgentProcess],
) -> None:
    agent = nats_agent(tmp_path, broker, repo, agents)
    client = AgentClient(agent.url)
    x = images(samples["1"], 1)
    await deploy(bus, repo, agent, builds["1"], "1", revision=1)
    old_timestamp = (repo / "metadata" / "timestamp.json").read_bytes()

    failures: list[BaseException] = []
    stop = threading.Event()

    def keep_asking() -> None:
        while not stop.is_set():
            try:
                assert client.infer("digits", {"image": x}).model_version == "1"
            except BaseException as e:  # collected and asserted below
                failures.append(e)
            time.sleep(0.01)

    asker = threading.Thread(target=keep_asking)
    asker.start()
    try:
        # 1. a tampered archive: one flipped byte in the object store copy of v2's artifact
        counter2 = await sign_and_publish(bus, repo, builds["2"], "digits", "2")
        archives = sorted((repo / "targets" / "digits" / "2").glob(f"*.{PROFILE}.tar"))
        assert archives
        tampered = tmp_path / "tampered.tar"
        data = bytearray(archives[0].read_bytes())
        data[len(data) // 2] ^= 0xFF
        tampered.write_bytes(bytes(data))
        name = subjects.artifact_object_name(archives[0].name.split(".")[0])
        await bus.objects.put_file(subjects.ARTIFACT_BUCKET, name, tampered)
        await set_desired(bus, "dev-1", 2, "digits", "2", counter2)
        refused = agent.wait_model("digits", lambda m: m["state"] == "failed", what="tampered refused")
        assert refused["last_error"]["code"] in ("IntegrityError", "TamperedArtifactError")

        # 2. replayed old metadata: the timestamp from before v2 was signed
        await bus.objects.put_file(subjects.ARTIFACT_BUCKET, name, archives[0])
        stale = tmp_path / "timestamp.json"
        stale.write_bytes(old_timestamp)
        await bus.objects.put_file(subjects.METADATA_BUCKET, "timestamp.json", stale)
        await set_desired(bus, "dev-1", 3, "digits", "2", counter2)
        refused = agent.wait_model(
            "digits",
            lambda m: m["last_error"] and m["last_error"]["code"] == "RollbackError",
            what="replay refused",
        )
        assert refused["current_version"] == "1"
    finally:
        stop.set()
        asker.join(timeout=10)
    assert not failures, failures[:3]


async def test_release_without_an_artifact_for_this_device_is_refused(
    tmp_path: Path,
    broker: EmbeddedBroker,
    bus: NatsBus,
    repo: Path,
    builds: dict[str, Path],
    agents: list[AgentProcess],
) -> None:
    agent = nats_agent(tmp_path, broker, repo, agents, "dev-arm", "cpu-arm64")
    counter = await sign_and_publish(bus, repo, builds["1"], "digits", "1")
    await set_desired(bus, "dev-arm", 1, "digits", "1", counter)
    model = agent.wait_model("digits", lambda m: m["state"] == "failed", what="no artifact for cpu-arm64")
    assert model["last_error"]["code"] == "NoArtifactForDeviceError" and model["current_version"] is None


async def test_lower_model_counter_is_refused_and_rollback_command_works(
    tmp_path: Path,
    broker: EmbeddedBroker,
    bus: NatsBus,
    repo: Path,
    builds: dict[str, Path],
    agents: list[AgentProcess],
) -> None:
    agent = nats_agent(tmp_path, broker, repo, agents)
    counter1 = await sign_and_publish(bus, repo, builds["1"], "digits", "1")
    counter2 = await sign_and_publish(bus, repo, builds["2"], "digits", "2")
    await set_desired(bus, "dev-1", 1, "digits", "1", counter1)
    agent.wait_model("digits", lambda m: m["current_version"] == "1", what="v1 active")
    await set_desired(bus, "dev-1", 2, "digits", "2", counter2)
    agent.wait_model("digits", lambda m: m["current_version"] == "2", what="v2 active")
    await set_desired(bus, "dev-1", 3, "digits", "1", counter1)
    refused = agent.wait_model("digits", lambda m: m["state"] == "failed", what="older counter refused")
    assert refused["last_error"]["code"] == "CounterRollbackError" and refused["current_version"] == "2"

    reply = await bus.request(
        subjects.command("dev-1", "rollback"),
        encode(RollbackModel(command_id="c1", model="digits")),
        timeout_s=30,
    )
    decoded = msgspec.json.decode(reply)
    assert decoded["is_ok"] is True, decoded
    rolled = agent.wait_model("digits", lambda m: m["current_version"] == "1", what="rolled back")
    assert rolled["state"] == "rolled_back" and rolled["previous_version"] == "2"


async def test_golden_mismatch_falls_back_to_the_next_profile_and_is_reported(
    tmp_path: Path,
    broker: EmbeddedBroker,
    bus: NatsBus,
    repo: Path,
    builds: dict[str, Path],
    agents: list[AgentProcess],
) -> None:
    corrupted = tmp_path / "build"
    shutil.copytree(builds["1"], corrupted)
    directory = corrupted / "intel-cpu-openvino"
    golden = dict(np.load(directory / GOLDEN_FILENAME, allow_pickle=False))
    golden["out.logits"] = golden["out.logits"] + 50.0
    np.savez(directory / GOLDEN_FILENAME, **golden)
    manifest = manifest_decoder.decode((directory / MANIFEST_FILENAME).read_bytes())
    data = (directory / GOLDEN_FILENAME).read_bytes()
    files = tuple(
        ArtifactFile(path=f.path, sha256=hashlib.sha256(data).hexdigest(), size_bytes=len(data))
        if f.path == GOLDEN_FILENAME
        else f
        for f in manifest.files
    )
    (directory / MANIFEST_FILENAME).write_bytes(
        msgspec.json.encode(msgspec.structs.replace(manifest, files=files))
    )

    agent = nats_agent(tmp_path, broker, repo, agents, "dev-ov", "intel-cpu-openvino")
    counter = await sign_and_publish(bus, repo, corrupted, "digits", "1")
    await set_desired(bus, "dev-ov", 1, "digits", "1", counter)
    model = agent.wait_model("digits", lambda m: m["current_version"] == "1", what="fallback active")
    assert model["state"] == "active"
    assert "failed the acceptance test" in agent.log()
    metadata = AgentClient(agent.url).metadata("digits")
    assert metadata.platform.startswith("onnxruntime")  # the cpu-x86_64 artifact serves


async def test_broker_outage_queues_telemetry_that_arrives_exactly_once(
    tmp_path: Path,
    broker: EmbeddedBroker,
    bus: NatsBus,
    repo: Path,
    builds: dict[str, Path],
    samples: dict[str, SavedSample],
    agents: list[AgentProcess],
) -> None:
    agent = nats_agent(tmp_path, broker, repo, agents)
    await deploy(bus, repo, agent, builds["1"], "1", revision=1)
    client = AgentClient(agent.url)
    x = images(samples["1"], 1)
    await bus.close()
    broker.stop()
    for _ in range(40):
        assert client.infer("digits", {"image": x}).model_version == "1"  # offline: still serving
    agent.wait_for(lambda s: s["queue_depth"] > 0, timeout_s=30, what="telemetry queued while offline")
    broker.start()
    async with NatsBus(broker.nats_url) as fresh:
        deadline = time.monotonic() + 60
        records: list[str] = []
        total = 0
        while time.monotonic() < deadline:
            records, total = await _telemetry_in_stream(fresh, "dev-1")
            if total >= 40 and (agent.status() or {}).get("queue_depth") == 0:
                break
            await asyncio.sleep(0.5)
    assert total >= 40
    assert len(records) == len(set(records)), "a telemetry record arrived twice"


async def _telemetry_in_stream(bus: NatsBus, device_id: str) -> tuple[list[str], int]:
    info = await bus.js.stream_info(subjects.TELEMETRY_STREAM)
    record_ids: list[str] = []
    count = 0
    if info.state.messages == 0:
        return record_ids, count
    for sequence in range(info.state.first_seq, info.state.last_seq + 1):
        message = await bus.js.get_msg(subjects.TELEMETRY_STREAM, sequence)
        event = device_event_decoder.decode(message.data or b"")
        if isinstance(event, TelemetryBatch) and event.device_id == device_id:
            record_ids.extend(r.record_id for r in event.records)
            count += sum(r.count for r in event.records if r.mode == "active")
    return record_ids, count


async def test_agent_killed_mid_download_resumes_and_completes(
    tmp_path: Path,
    broker: EmbeddedBroker,
    bus: NatsBus,
    repo: Path,
    agents: list[AgentProcess],
) -> None:
    big = _big_model(tmp_path / "big")
    build = build_release(big, tmp_path / "big-build", "1", (PROFILE,))
    counter = await sign_and_publish(bus, repo, build, "digits", "1")
    agent = nats_agent(tmp_path, broker, repo, agents)
    await set_desired(bus, "dev-1", 1, "digits", "1", counter)
    checkpoint: Path | None = None
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and checkpoint is None:
        checkpoint = next((agent.state_dir / "downloads").glob("*.part.json"), None)
        time.sleep(0.002)
    assert checkpoint is not None, "the download never checkpointed"
    assert broker.pid is not None
    os.kill(broker.pid, signal.SIGSTOP)  # freeze the transfer, then kill the agent mid-download
    try:
        agent.kill()
    finally:
        os.kill(broker.pid, signal.SIGCONT)
    agent.start()
    agent.wait_model("digits", lambda m: m["current_version"] == "1", what="resumed install", timeout_s=120)
    fetched = [line for line in agent.log().splitlines() if "fetched" in line]
    assert fetched, agent.log()[-2000:]
    last = fetched[-1]
    now, total = (int(w) for w in last.split("fetched ")[1].split(" bytes")[0].split(" of "))
    assert 0 < now < total


def _big_model(directory: Path) -> SavedSample:
    """The trained digits MLP widened to 400k hidden units (tens of MB): the extra units have tiny
    random input weights and no output weights, so predictions (and INT8 accuracy) stay the same."""
    import onnx

    small = digits_mlp()
    weights = {i.name: onnx.numpy_helper.to_array(i) for i in small.model.graph.initializer}
    w1, w2 = weights["fc1.weight"], weights["fc2.weight"]
    extra = 400_000 - w1.shape[1]
    rng = np.random.default_rng(0)
    wide = {
        "fc1.weight": np.concatenate([w1, (rng.normal(size=(64, extra)) / 256).astype(np.float32)], axis=1),
        "fc1.bias": np.concatenate([weights["fc1.bias"], np.zeros(extra, np.float32)]),
        "fc2.weight": np.concatenate([w2, np.zeros((extra, w2.shape[1]), np.float32)]),
        "fc2.bias": weights["fc2.bias"],
    }
    for initializer in small.model.graph.initializer:
        initializer.CopyFrom(onnx.numpy_helper.from_array(wide[initializer.name], initializer.name))
    return small.save(directory)


async def test_agent_killed_during_activation_serves_one_consistent_version(
    tmp_path: Path,
    broker: EmbeddedBroker,
    bus: NatsBus,
    repo: Path,
    builds: dict[str, Path],
    samples: dict[str, SavedSample],
    agents: list[AgentProcess],
) -> None:
    agent = nats_agent(tmp_path, broker, repo, agents)
    await deploy(bus, repo, agent, builds["1"], "1", revision=1)
    counter2 = await sign_and_publish(bus, repo, builds["2"], "digits", "2")
    await set_desired(bus, "dev-1", 2, "digits", "2", counter2)
    agent.wait_model(
        "digits",
        lambda m: m["state"] in ("testing", "active") and m["target_version"] == "2",
        what="v2 activating",
        timeout_s=60,
    )
    agent.kill()
    agent.start()
    x = images(samples["1"], 1)
    result = AgentClient(agent.url).infer("digits", {"image": x})
    served = result.model_version
    assert served in ("1", "2")
    np.testing.assert_allclose(result.outputs["logits"], expected_logits(builds[served], x), atol=1e-4)
    agent.wait_model("digits", lambda m: m["current_version"] == "2", what="converged on v2 after restart")


async def test_restarted_without_network_it_serves_the_last_active_model(
    tmp_path: Path,
    broker: EmbeddedBroker,
    bus: NatsBus,
    repo: Path,
    builds: dict[str, Path],
    samples: dict[str, SavedSample],
    agents: list[AgentProcess],
) -> None:
    agent = nats_agent(tmp_path, broker, repo, agents)
    await deploy(bus, repo, agent, builds["1"], "1", revision=1)
    agent.stop()
    await bus.close()
    broker.stop()
    agent.start()
    assert AgentClient(agent.url).infer("digits", {"image": images(samples["1"], 1)}).model_version == "1"


async def test_shadow_release_reports_agreement_without_changing_answers(
    tmp_path: Path,
    broker: EmbeddedBroker,
    bus: NatsBus,
    repo: Path,
    builds: dict[str, Path],
    samples: dict[str, SavedSample],
    agents: list[AgentProcess],
) -> None:
    agent = nats_agent(tmp_path, broker, repo, agents, env={"EDGEFABRIC_AGENT_SHADOW_SAMPLE_FRACTION": "1.0"})
    counter1 = await sign_and_publish(bus, repo, builds["1"], "digits", "1")
    counter2 = await sign_and_publish(bus, repo, builds["2"], "digits", "2")
    await set_desired(bus, "dev-1", 1, "digits", "1", counter1)
    agent.wait_model("digits", lambda m: m["current_version"] == "1", what="v1 active")
    await set_desired(bus, "dev-1", 2, "digits", "2", counter2, mode="shadow")
    agent.wait_model("digits", lambda m: m["shadow_version"] == "2", what="v2 in shadow")
    client = AgentClient(agent.url)
    x = images(samples["1"], 64)
    for index in range(64):
        assert client.infer("digits", {"image": x[index : index + 1]}).model_version == "1"
    deadline = time.monotonic() + 30
    shadow: list[float] = []
    while time.monotonic() < deadline and not shadow:
        shadow = await _shadow_agreement(bus, "dev-1")
        await asyncio.sleep(0.5)
    assert shadow and all(0.0 <= a <= 1.0 for a in shadow)


async def _shadow_agreement(bus: NatsBus, device_id: str) -> list[float]:
    info = await bus.js.stream_info(subjects.TELEMETRY_STREAM)
    found: list[float] = []
    for sequence in range(info.state.first_seq, info.state.last_seq + 1) if info.state.messages else ():
        event = device_event_decoder.decode(
            (await bus.js.get_msg(subjects.TELEMETRY_STREAM, sequence)).data or b""
        )
        if isinstance(event, TelemetryBatch) and event.device_id == device_id:
            found.extend(
                r.shadow_agreement
                for r in event.records
                if r.mode == "shadow" and r.shadow_agreement is not None
            )
    return found
