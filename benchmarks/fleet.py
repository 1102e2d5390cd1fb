"""Fleet rollout benchmark (issue 6): from rollout creation until every agent reports the new version active.

Control plane: one, in this process, assembled as `edgefabric up` assembles it minus the HTTP socket
(nothing here calls the API): the embedded nats-server in operator mode (JWT auth; every device
connects with its own credentials), `Services.build` over a real SQLite data dir, and the app's
lifespan, which connects the broker and starts the background workers (rollout engine, device
monitor, telemetry ingest, ...). Engine settings are the product defaults unless `--tick-s`,
`--writes-per-tick` or `--flush-s` override them (the report records them).

Fleet: `--sizes` fleets (default 100, then 1,000 devices), each with a fresh control plane. Devices are
enrolled through `EnrollmentService.enroll` with one token of `max_uses = N`: the real enrollment on
both sides (device key, proof of possession, per-device NATS JWT, trusted root, the agent config
`edgefabric-agent enroll` writes), but not through `POST /api/v1/enroll`, whose rate limit (a burst of
20, then one request per 2 s per client) is right for a real control plane and would stretch 1,000
enrollments over 8 minutes. Every device is a real `edge_agent.daemon.Agent` (reconciler, NatsBus with
its own credentials, TUF metadata mirror and verification, resumable download, verified unpack,
acceptance, reported state, heartbeats, command service) without its local HTTP API; `--workers`
subprocesses of this file (`--worker SPEC`) run N / workers agents each, on one event loop per process,
each agent with its own state dir and broker connection.

Stand-in (declared): above `--real-acceptance-max` devices (default 100) the agents of one worker
process share one ONNX Runtime session per artifact (`SharedSessions` replaces the session opening in
`edge_agent.acceptance`): each agent still runs the whole acceptance test (golden outputs, latency
budget) and serves through its own `ModelServer`, but 1,000 sessions are neither opened nor held.
Download, hashing, TUF verification and unpacking stay real in every agent. Sharing a process has a
cost of its own: the agent writes its lifecycle state and Object Store files with fsync on its event
loop, which on a device stalls only that agent but here stalls every agent of the worker; more
`--workers` (default 4) overlap more of those waits.

Profiling: `--profile-dir D` runs every worker under cProfile with a CPU-time clock (the event loop's
thread only) and writes `D/worker-<i>.pstats`.

Artifact: an FP32 MLP 64 -> 512 -> 896 -> 10 (ReLU; 500,874 float32 weights, He-normal random weights
seeded by the version, so every release is a different 2.0 MB archive), compiled for cpu-x86_64 by
`compile_model` with the FP32 recipe (`quantization="none"`; the profile's INT8 recipe would shrink it
to ~0.5 MB), signed and published by `ReleaseService.create`. Accuracy is irrelevant here.

Per fleet: version 1 is installed on every device first (a warm-up rollout, reported separately), then
`--runs` rounds (`--large-runs` for fleets above `--real-acceptance-max`), each round one rollout per
`--variants` entry, each of the next version: `waves` = a 1 % canary then 100 %; `single` = one wave.
Gates: `soak_s = 0`, `min_requests = 0` (the install gate must see every device installed; the
telemetry gates have no data and are skipped), so the time measured is convergence.

Measured per rollout, from the control plane's view (clock: this process; t = 0 just before
`RolloutService.create`): an observer connection (service credentials) watches every device's desired
and reported twin keys; a device has converged when its reported state first shows the new version
active. Reported: per-device convergence p50 / p95 / max, the time the rollout row says `completed`
(the engine's own view, which also waits for the device monitor's batched writes and its next tick),
desired-state writes (count, first and last after t = 0, rate), agent time (desired seen -> reported
active, p50 / p95), the waves' start and end, artifact bytes the agents fetched (counted by a wrapper
around each agent's `ArtifactSource`), bytes nats-server sent (`/varz` out_bytes, monitoring on a
loopback port), CPU seconds of this process (control plane + observer), nats-server and the workers,
and CPU the rest of the machine used meanwhile (/proc/stat). Medians over the timed runs per variant.

Target (issue 6): N = 1,000 converged in <= 30 s on the 2-core machine. Anchors: AWS IoT Jobs rolls out
to at most 1,000 devices per minute; Mender clients poll every 30 minutes by default.

Every loop is bounded by a count, every wait by `--op-timeout-s`, the whole run by `--budget-s`; every
socket is on 127.0.0.1; workers die with this process (PR_SET_PDEATHSIG, and `--worker-max-s`), and
everything lives in one temporary directory. Exit codes: 0 done and every check passed; 1 a check
failed (a rollout did not complete, or a device did not converge); 2 bad usage (argparse); 3 the
broker, a worker or an operation failed or timed out.

Usage: `python benchmarks/fleet.py [--sizes 100 1000] [--runs 3] [--large-runs 1] [--workers 4]
[--json-out benchmarks/results/fleet.json]` (see `--help`).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import cProfile
import ctypes
import datetime
import importlib.metadata
import itertools
import json
import logging
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

# `python benchmarks/fleet.py` puts this file's directory first on sys.path, where
# `benchmarks/control_plane.py` would shadow the `control_plane` package.
if sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
    sys.path.pop(0)

import edge_agent.acceptance
from control_plane.app import Endpoints, Services, create_app
from control_plane.audit.schemas import Actor
from control_plane.broker import EmbeddedBroker, find_nats_server
from control_plane.broker_auth.authority import BrokerAuthority
from control_plane.clock import SystemClock
from control_plane.config import ControlPlaneConfig
from control_plane.errors import NotFoundError
from control_plane.fleet.schemas import CreateEnrollmentTokenRequest
from control_plane.releases.schemas import CompileOutput, CreateReleaseRequest
from control_plane.rollouts.schemas import (
    Gates,
    RolloutSpec,
    RolloutState,
    RolloutStatus,
    WaveStep,
)
from control_plane.server import open_data_dir
from edge_agent.config import AgentConfig, load_config
from edge_agent.daemon import AGENT_VERSION, Agent
from edge_agent.enrollment import enrollment_request, load_or_create_device_key, write_enrollment
from edge_agent.sources import ArtifactSource
from hardware_profiles.runtimes import ExecutionSettings, InferenceSession, open_session
from model_compiler.compiler import CompileRequest, compile_model
from model_compiler.signing.release import SignedTarget
from model_compiler.verification import ReleaseVerifier
from protocols.codec import desired_state_decoder, reported_state_decoder
from protocols.errors import FabricError
from protocols.transports.bus import Bus, StateWatch
from protocols.transports.nats_bus import NatsBus

EXIT_OK, EXIT_CHECK_FAILED, EXIT_FAILED = 0, 1, 3
DEFAULT_JSON = Path(__file__).resolve().parent / "results" / "fleet.json"
REPO_ROOT = Path(__file__).resolve().parents[1]
MODEL, PROFILE = "digits", "cpu-x86_64"
LAYER_SIZES = (64, 512, 896, 10)
ACTOR = Actor(id="benchmark", name="benchmarks/fleet.py")
TARGET_S, TARGET_DEVICES = 30.0, 1000
VARIANTS: dict[str, tuple[WaveStep, ...]] = {
    "waves": (WaveStep(percent=1.0), WaveStep(percent=100.0)),
    "single": (WaveStep(percent=100.0),),
}
CONVERGENCE_GATES = Gates(soak_s=0.0, min_requests=0)
MEASURING = {RolloutState.RUNNING, RolloutState.PAUSED}
"""A rollout in any other state has completed or failed (a failed one is not waited for: rolling
1,000 devices back takes minutes, and the fleet's remaining runs are skipped)."""
POLL_S = 0.05
STATUS_POLL_S = 0.25
PROGRESS_S = 5.0
STATS_WRITE_S = 0.25
WORKER_STOP_S = 30.0
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
logger = logging.getLogger("benchmarks.fleet")


# --- report --------------------------------------------------------------------------------------


class Machine(msgspec.Struct, frozen=True, kw_only=True):
    usable_cpus: int
    cpu_model: str
    memory_gib: float
    platform: str
    python: str
    nats_server: str
    nats_py: str
    onnxruntime: str


class CpuUse(msgspec.Struct, frozen=True, kw_only=True):
    """CPU seconds over one rollout (t = 0 until every device converged and the rollout completed)."""

    wall_s: float
    control_plane_s: float
    """This process: the control plane and the observer."""
    broker_s: float
    agents_s: float
    """Every worker process together."""
    other_s: float
    """The rest of the machine (/proc/stat busy time minus the three above)."""


class WaveTiming(msgspec.Struct, frozen=True, kw_only=True):
    position: int
    devices: int
    started_s: float | None
    finished_s: float | None


class RunStats(msgspec.Struct, frozen=True, kw_only=True):
    label: str
    """`warm-up` (version 1 onto an empty fleet) or `run <k>`."""
    variant: str
    version: str
    devices: int
    state: str
    """The rollout's state at the end (`completed` unless something failed)."""
    converged: int
    """Devices whose reported state showed the version active."""
    p50_s: float | None
    p95_s: float | None
    max_s: float | None
    """Per-device convergence (creation -> reported active, as the observer received it)."""
    completed_s: float | None
    """Creation -> the rollout row's `finished_at` (engine clock)."""
    desired_writes: int
    first_write_s: float | None
    last_write_s: float | None
    writes_per_s: float | None
    """Desired-state writes of the last wave / their time span, as the observer received them."""
    agent_p50_s: float | None
    agent_p95_s: float | None
    """Per device: desired state received -> reported active (download, verify, accept, report)."""
    waves: list[WaveTiming]
    reason: str | None
    """Why the rollout stopped (a failed gate), as the engine recorded it."""
    failures: dict[str, int]
    """The errors devices that did not converge reported for the version (their last, counted)."""
    downloads: int
    artifact_bytes: int
    broker_out_bytes: int
    cpu: CpuUse
    load_avg_1m: float


class VariantSummary(msgspec.Struct, frozen=True, kw_only=True):
    variant: str
    runs: int
    median_p50_s: float | None
    median_p95_s: float | None
    median_max_s: float | None
    median_completed_s: float | None
    median_writes_per_s: float | None
    median_agent_p50_s: float | None
    median_cores: dict[str, float]
    """Median cores used over the runs: control plane, broker, agents, other."""
    median_cpu_ms_per_device: dict[str, float]
    """Median CPU milliseconds per device (control plane, broker, agents): robust to other load."""
    all_converged: bool


class FleetStats(msgspec.Struct, frozen=True, kw_only=True):
    devices: int
    workers: int
    real_acceptance: bool
    """False: the declared stand-in (one ORT session per artifact and worker process)."""
    archive_bytes: int
    enroll_s: float
    agents_ready_s: float
    """Workers started -> every device's first reported state received."""
    worker_rss_mib: list[float]
    """Each worker's VmRSS after the last run."""
    runs: list[RunStats]
    summaries: list[VariantSummary]


class EngineSettings(msgspec.Struct, frozen=True, kw_only=True):
    rollout_tick_interval_s: float
    rollout_writes_per_tick: int
    device_flush_interval_s: float


class Report(msgspec.Struct, frozen=True, kw_only=True):
    benchmark: str
    date: str
    command: str
    machine: Machine
    engine: EngineSettings
    fleets: list[FleetStats]
    target_s: float
    budget_exhausted: bool = False


# --- worker protocol -----------------------------------------------------------------------------


class WorkerSpec(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """What one worker process runs: agents from their enrollment configs."""

    config_paths: list[str]
    stats_path: str
    shared_sessions: bool
    max_s: float
    profile_path: str | None = None
    """Run the worker under cProfile and write its stats here."""


class WorkerStats(msgspec.Struct, frozen=True, kw_only=True):
    """What a worker writes to `stats_path` (atomically, every `STATS_WRITE_S` while it changes)."""

    agents: int
    failed_agents: int
    downloads: int
    artifact_bytes: int
    sessions_opened: int


@dataclass
class Counters:
    failed_agents: int = 0
    downloads: int = 0
    artifact_bytes: int = 0
    sessions_opened: int = 0

    def snapshot(self, agents: int) -> WorkerStats:
        return WorkerStats(
            agents=agents,
            failed_agents=self.failed_agents,
            downloads=self.downloads,
            artifact_bytes=self.artifact_bytes,
            sessions_opened=self.sessions_opened,
        )


class Budget:
    """A wall-clock budget for the whole run; no new rollout starts once it is spent."""

    def __init__(self, seconds: float) -> None:
        self.deadline = time.monotonic() + seconds
        self.exhausted = False

    def allows(self) -> bool:
        if time.monotonic() >= self.deadline:
            self.exhausted = True
        return not self.exhausted


# --- the release ---------------------------------------------------------------------------------


def mlp(seed: int) -> onnx.ModelProto:
    """FP32 MLP over `LAYER_SIZES` with ReLU, "pixels" [N, 64] -> "logits" [N, 10], random weights."""
    rng = np.random.default_rng(seed)
    nodes, initializers, previous = [], [], "pixels"
    for i, (fan_in, fan_out) in enumerate(itertools.pairwise(LAYER_SIZES)):
        is_last = i == len(LAYER_SIZES) - 2
        weight = (rng.standard_normal((fan_in, fan_out)) * np.sqrt(2.0 / fan_in)).astype(np.float32)
        initializers += [
            numpy_helper.from_array(weight, f"fc{i}.weight"),
            numpy_helper.from_array(np.zeros(fan_out, np.float32), f"fc{i}.bias"),
        ]
        nodes += [
            helper.make_node("MatMul", [previous, f"fc{i}.weight"], [f"fc{i}.matmul"]),
            helper.make_node("Add", [f"fc{i}.matmul", f"fc{i}.bias"], ["logits" if is_last else f"fc{i}"]),
        ]
        if not is_last:
            nodes.append(helper.make_node("Relu", [f"fc{i}"], [f"relu{i}"]))
            previous = f"relu{i}"
    graph = helper.make_graph(
        nodes,
        "fleet_mlp",
        [helper.make_tensor_value_info("pixels", TensorProto.FLOAT, ["N", LAYER_SIZES[0]])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", LAYER_SIZES[-1]])],
        initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.checker.check_model(model, full_check=True)
    return model


@dataclass
class CompiledReleases:
    """`BuiltArtifacts` over versions compiled here by the real compiler (one "job" per version)."""

    root: Path
    data_dir: Path
    built: set[str] = field(default_factory=set)

    def compile(self, version: str) -> None:
        if version in self.built:
            return
        if not self.built:
            self._write_data()
        source = self.root / "sources" / f"{version}.onnx"
        source.parent.mkdir(parents=True, exist_ok=True)
        onnx.save_model(mlp(int(version)), source)
        report = compile_model(
            CompileRequest(
                model_path=source,
                profiles=(PROFILE,),
                out_dir=self.root / f"job-{version}",
                model_name=MODEL,
                version=version,
                calibration_path=self.data_dir / "calibration.npz",
                validation_path=self.data_dir / "validation.npz",
                quantization="none",
            )
        )
        if not report.is_success:
            raise RuntimeError(f"compiling version {version}: {[r.reason for r in report.results]}")
        self.built.add(version)

    def output_for(self, model: str, version: str, job_id: str | None) -> CompileOutput:
        if model != MODEL or version not in self.built:
            raise NotFoundError("succeeded compile job", f"{model}/{version}")
        return CompileOutput(job_id=f"job-{version}", out_dir=self.root / f"job-{version}")

    def _write_data(self) -> None:
        """Calibration and validation inputs (seeded uniform pixels; the FP32 recipe only validates)."""
        rng = np.random.default_rng(0)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        np.savez(self.data_dir / "calibration.npz", pixels=rng.random((64, 64), dtype=np.float32))
        np.savez(
            self.data_dir / "validation.npz",
            pixels=rng.random((200, 64), dtype=np.float32),
            labels=rng.integers(0, 10, 200),
        )


# --- the worker process: many real agents on one event loop --------------------------------------


class CountingSource(ArtifactSource):
    """The agent's own artifact source, counting what its downloads fetch."""

    def __init__(self, inner: ArtifactSource, counters: Counters) -> None:
        self._inner = inner
        self._counters = counters

    async def verifier(self, trusted_root: bytes, metadata_cache: Path) -> ReleaseVerifier:
        return await self._inner.verifier(trusted_root, metadata_cache)

    async def download(self, target: SignedTarget, dest: Path) -> int:
        fetched = await self._inner.download(target, dest)
        self._counters.downloads += 1
        self._counters.artifact_bytes += fetched
        return fetched


class BenchAgent(Agent):
    """The daemon's `Agent`, its artifact source wrapped in a `CountingSource`."""

    def __init__(self, config: AgentConfig, counters: Counters) -> None:
        super().__init__(config)
        self._counters = counters

    def _make_bus(self) -> tuple[Bus, ArtifactSource]:
        bus, source = super()._make_bus()
        return bus, CountingSource(source, self._counters)


class SharedSessions:
    """The declared stand-in for large fleets: one ORT session per artifact in this process.

    `edge_agent.acceptance.open_session` becomes `open`: the store names an unpacked artifact's
    directory by its archive's sha256, so agents that installed the same release share its session.
    """

    def __init__(self, counters: Counters) -> None:
        self._counters = counters
        self._sessions: dict[str, InferenceSession] = {}
        self._lock = threading.Lock()  # acceptance runs in worker threads

    def install(self) -> None:
        edge_agent.acceptance.open_session = self.open  # type: ignore[attr-defined]

    def open(
        self, model_path: Path, settings: ExecutionSettings, *, allow_cpu_equivalent: bool = False
    ) -> InferenceSession:
        key = f"{model_path.parent.name}/{model_path.name}"
        with self._lock:
            session = self._sessions.get(key)
            if session is None:
                session = open_session(model_path, settings, allow_cpu_equivalent=allow_cpu_equivalent)
                self._sessions[key] = session
                self._counters.sessions_opened += 1
            return session


async def run_agent(agent: Agent, stop: asyncio.Event, counters: Counters) -> None:
    """`Agent.run` without the local HTTP API: serve what is installed, then the online part."""
    try:
        await agent.serve_installed()
        await agent.report()
        await agent.run_online(stop)
    except Exception:
        counters.failed_agents += 1
        logger.exception("agent %s failed", agent.config.device_id)
    finally:
        await agent.server.close()
        agent.queue.close()


def write_stats(path: Path, stats: WorkerStats) -> None:
    partial = path.with_name(path.name + ".partial")
    partial.write_bytes(msgspec.json.encode(stats))
    partial.replace(path)


async def run_worker(spec: WorkerSpec) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    counters = Counters()
    if spec.shared_sessions:
        SharedSessions(counters).install()
    agents: list[Agent] = [BenchAgent(load_config(Path(p), env={}), counters) for p in spec.config_paths]
    tasks = [asyncio.create_task(run_agent(agent, stop, counters)) for agent in agents]
    stats_path, parent, deadline = Path(spec.stats_path), os.getppid(), time.monotonic() + spec.max_s
    written: WorkerStats | None = None
    while not stop.is_set():
        stats = counters.snapshot(len(agents))
        if stats != written:
            await asyncio.to_thread(write_stats, stats_path, stats)
            written = stats
        if os.getppid() != parent or time.monotonic() > deadline:
            stop.set()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), STATS_WRITE_S)
    _, still_running = await asyncio.wait(tasks, timeout=WORKER_STOP_S)
    for task in still_running:
        task.cancel()
    await asyncio.to_thread(write_stats, stats_path, counters.snapshot(len(agents)))
    return 0 if not still_running else EXIT_FAILED


def worker_main(spec_path: Path) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    spec = msgspec.json.decode(spec_path.read_bytes(), type=WorkerSpec)
    if spec.profile_path is None:
        return asyncio.run(run_worker(spec))
    profile = cProfile.Profile(time.thread_time)  # CPU time of the event loop's thread
    try:
        return profile.runcall(asyncio.run, run_worker(spec))
    finally:
        profile.dump_stats(spec.profile_path)


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when the benchmark process dies (Linux PR_SET_PDEATHSIG)."""
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(1, signal.SIGTERM)


@dataclass
class Worker:
    process: subprocess.Popen[bytes]
    stats_path: Path
    log_path: Path

    def stats(self) -> WorkerStats | None:
        try:
            return msgspec.json.decode(self.stats_path.read_bytes(), type=WorkerStats)
        except (OSError, msgspec.DecodeError):
            return None


@contextlib.contextmanager
def workers_running(
    config_paths: list[Path],
    work: Path,
    count: int,
    *,
    shared_sessions: bool,
    max_s: float,
    profile_dir: Path | None,
) -> Iterator[list[Worker]]:
    """`count` worker processes over `config_paths` (round-robin); stopped (SIGTERM, then SIGKILL) on exit."""
    started: list[Worker] = []
    try:
        for index in range(count):
            spec_path = work / f"worker-{index}.json"
            spec = WorkerSpec(
                config_paths=[str(p) for p in config_paths[index::count]],
                stats_path=str(work / f"worker-{index}.stats.json"),
                shared_sessions=shared_sessions,
                max_s=max_s,
                profile_path=None if profile_dir is None else str(profile_dir / f"worker-{index}.pstats"),
            )
            spec_path.write_bytes(msgspec.json.encode(spec))
            log_path = work / f"worker-{index}.log"
            with log_path.open("ab") as log:
                process = subprocess.Popen(
                    [sys.executable, str(Path(__file__).resolve()), "--worker", str(spec_path)],
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=log,
                    cwd=REPO_ROOT,
                    preexec_fn=_die_with_parent if sys.platform == "linux" else None,
                )
            started.append(Worker(process, Path(spec.stats_path), log_path))
        yield started
    finally:
        for worker in started:
            if worker.process.poll() is None:
                worker.process.terminate()
        for worker in started:
            try:
                worker.process.wait(timeout=WORKER_STOP_S + 5)
            except subprocess.TimeoutExpired:
                worker.process.kill()
                worker.process.wait()


# --- the control plane's view --------------------------------------------------------------------


@dataclass
class Observer:
    """Arrival times (perf_counter) of desired and reported twin values, per version and device."""

    desired: dict[str, dict[str, float]] = field(default_factory=dict)
    active: dict[str, dict[str, float]] = field(default_factory=dict)
    errors: dict[str, dict[str, str]] = field(default_factory=dict)
    """Per target version and device, the last error the device reported."""
    reporting: set[str] = field(default_factory=set)

    async def watch_desired(self, watch: StateWatch) -> None:
        async for update in watch:
            if update.payload is None:
                continue
            now = time.perf_counter()
            desired = desired_state_decoder.decode(update.payload)
            for assignment in desired.models:
                if assignment.model == MODEL and assignment.mode == "active":
                    self.desired.setdefault(assignment.release.version, {}).setdefault(
                        update.key.device_id, now
                    )

    async def watch_reported(self, watch: StateWatch) -> None:
        async for update in watch:
            if update.payload is None:
                continue
            now = time.perf_counter()
            reported = reported_state_decoder.decode(update.payload)
            self.reporting.add(update.key.device_id)
            for status in reported.models:
                if status.model == MODEL and status.last_error is not None and status.target_version:
                    error = f"{status.last_error.code}: {status.last_error.message}"[:300]
                    self.errors.setdefault(status.target_version, {})[update.key.device_id] = error
                if status.model == MODEL and status.state == "active" and status.current_version:
                    self.active.setdefault(status.current_version, {}).setdefault(update.key.device_id, now)


@contextlib.asynccontextmanager
async def observing(bus: NatsBus) -> AsyncIterator[Observer]:
    observer = Observer()
    async with await bus.watch_state("desired") as desired, await bus.watch_state("reported") as reported:
        tasks = [
            asyncio.create_task(observer.watch_desired(desired)),
            asyncio.create_task(observer.watch_reported(reported)),
        ]
        try:
            yield observer
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)


def process_cpu_s(pid: int) -> float:
    """utime + stime of `pid` (0 once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def machine_busy_s() -> float:
    """Busy CPU seconds of the whole machine since boot (/proc/stat: user..steal, minus idle, iowait)."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:9]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = values
    return (user + nice + system + irq + softirq + steal) / CLOCK_TICKS


def rss_mib(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return 0.0


def broker_out_bytes(monitor_port: int) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{monitor_port}/varz", timeout=5) as response:
        return int(json.loads(response.read())["out_bytes"])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (`q` in 0..100); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, round(q / 100 * len(ordered) + 0.5) - 1))]


def rounded(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(value, digits)


@dataclass
class CpuMark:
    at: float
    own: float
    broker: float
    agents: float
    machine: float

    @classmethod
    def now(cls, broker_pid: int, workers: list[Worker]) -> CpuMark:
        return cls(
            at=time.perf_counter(),
            own=process_cpu_s(os.getpid()),
            broker=process_cpu_s(broker_pid),
            agents=sum(process_cpu_s(w.process.pid) for w in workers),
            machine=machine_busy_s(),
        )

    def until(self, end: CpuMark) -> CpuUse:
        own, broker, agents = end.own - self.own, end.broker - self.broker, end.agents - self.agents
        return CpuUse(
            wall_s=round(end.at - self.at, 3),
            control_plane_s=round(own, 2),
            broker_s=round(broker, 2),
            agents_s=round(agents, 2),
            other_s=round(max(0.0, end.machine - self.machine - own - broker - agents), 2),
        )


# --- one fleet -----------------------------------------------------------------------------------


@dataclass
class Fleet:
    """A running control plane, its fleet and the observer; `rollout` measures one rollout."""

    args: argparse.Namespace
    services: Services
    releases: CompiledReleases
    broker: EmbeddedBroker
    monitor_port: int
    observer: Observer
    workers: list[Worker]
    devices: int
    versions: Iterator[int] = field(default_factory=lambda: itertools.count(1))

    def worker_totals(self) -> tuple[int, int, int]:
        """(downloads, artifact bytes, failed agents) over every worker's last stats."""
        stats = [s for s in (w.stats() for w in self.workers) if s is not None]
        return (
            sum(s.downloads for s in stats),
            sum(s.artifact_bytes for s in stats),
            sum(s.failed_agents for s in stats),
        )

    def check_workers(self) -> None:
        for worker in self.workers:
            if worker.process.poll() is not None:
                log = worker.log_path.read_text(errors="replace")[-3000:]
                raise RuntimeError(f"worker exited with {worker.process.returncode}:\n{log}")
        if (failed := self.worker_totals()[2]) > 0:
            tails = "\n".join(w.log_path.read_text(errors="replace")[-3000:] for w in self.workers)
            raise RuntimeError(f"{failed} agent(s) failed; the workers' logs end:\n{tails}")

    async def rollout(self, label: str, variant: str) -> RunStats:
        version = str(next(self.versions))
        await asyncio.to_thread(self.releases.compile, version)
        await self.services.releases.create(ACTOR, CreateReleaseRequest(model=MODEL, version=version))
        spec = RolloutSpec(model=MODEL, version=version, waves=VARIANTS[variant], gates=CONVERGENCE_GATES)
        load = os.getloadavg()[0]
        downloads_before, bytes_before, _ = self.worker_totals()
        out_before = await asyncio.to_thread(broker_out_bytes, self.monitor_port)
        mark = CpuMark.now(self.broker.pid or 0, self.workers)
        started = time.perf_counter()
        status = await self.services.rollouts.create(ACTOR, spec)
        status = await self._wait(status.id, version, started)
        end = CpuMark.now(self.broker.pid or 0, self.workers)
        await asyncio.sleep(2 * STATS_WRITE_S)  # the workers' last counts
        downloads_after, bytes_after, _ = self.worker_totals()
        out_after = await asyncio.to_thread(broker_out_bytes, self.monitor_port)
        return self._stats(
            label,
            variant,
            status,
            started,
            cpu=mark.until(end),
            load=load,
            downloads=downloads_after - downloads_before,
            artifact_bytes=bytes_after - bytes_before,
            out_bytes=out_after - out_before,
        )

    async def _wait(self, rollout_id: str, version: str, started: float) -> RolloutStatus:
        """Until the rollout completed and every device reported `version` active, or it failed."""
        deadline = started + self.args.op_timeout_s
        status = self.services.rollouts.status(rollout_id)
        next_status, next_progress = started + STATUS_POLL_S, started + PROGRESS_S
        while time.perf_counter() < deadline:
            now = time.perf_counter()
            if now >= next_status:
                status = self.services.rollouts.status(rollout_id)
                next_status = now + STATUS_POLL_S
                self.check_workers()
            if now >= next_progress:
                next_progress = now + PROGRESS_S
                print(
                    f"    {now - started:.0f} s: {status.state.value}, wave {status.current_wave}, "
                    f"{len(self.observer.desired.get(version, {}))} written, "
                    f"{len(self.observer.active.get(version, {}))} converged",
                    file=sys.stderr,
                )
            converged = len(self.observer.active.get(version, {}))
            if status.state not in MEASURING and (
                converged >= self.devices or status.state != RolloutState.COMPLETED
            ):
                return status
            await asyncio.sleep(POLL_S)
        raise TimeoutError(f"rollout of version {version} to {self.devices} devices")

    def _stats(
        self,
        label: str,
        variant: str,
        status: RolloutStatus,
        started: float,
        *,
        cpu: CpuUse,
        load: float,
        downloads: int,
        artifact_bytes: int,
        out_bytes: int,
    ) -> RunStats:
        version = status.version
        active = self.observer.active.get(version, {})
        desired = self.observer.desired.get(version, {})
        converged = [t - started for t in active.values()]
        writes = sorted(t - started for t in desired.values())
        agent = [active[d] - desired[d] for d in active if d in desired]
        created = status.created_at

        def since_created(at: datetime.datetime | None) -> float | None:
            return None if at is None else round((at - created).total_seconds(), 3)

        last_wave_s = since_created(status.waves[-1].started_at) or 0.0
        last_writes = [t for t in writes if t >= last_wave_s]
        write_span = last_writes[-1] - last_writes[0] if len(last_writes) > 1 else 0.0
        return RunStats(
            label=label,
            variant=variant,
            version=version,
            devices=self.devices,
            state=status.state.value,
            converged=len(converged),
            p50_s=rounded(statistics.median(converged) if converged else None),
            p95_s=rounded(percentile(converged, 95)),
            max_s=rounded(max(converged, default=None)),
            completed_s=since_created(status.finished_at),
            desired_writes=len(writes),
            first_write_s=rounded(writes[0] if writes else None),
            last_write_s=rounded(writes[-1] if writes else None),
            writes_per_s=rounded(len(last_writes) / write_span, 1) if write_span > 0 else None,
            agent_p50_s=rounded(statistics.median(agent) if agent else None),
            agent_p95_s=rounded(percentile(agent, 95)),
            waves=[
                WaveTiming(
                    position=w.position,
                    devices=w.device_count,
                    started_s=since_created(w.started_at),
                    finished_s=since_created(w.finished_at),
                )
                for w in status.waves
            ],
            reason=status.reason,
            failures=dict(
                collections.Counter(
                    error
                    for device, error in self.observer.errors.get(version, {}).items()
                    if device not in active
                ).most_common()
            ),
            downloads=downloads,
            artifact_bytes=artifact_bytes,
            broker_out_bytes=out_bytes,
            cpu=cpu,
            load_avg_1m=round(load, 2),
        )


def enroll_devices(services: Services, work: Path, count: int) -> list[Path]:
    """`count` devices enrolled through the enrollment service; their agent config paths."""
    token = services.enrollment.create_token(
        ACTOR, CreateEnrollmentTokenRequest(name="fleet benchmark", max_uses=count)
    )
    paths = []
    for index in range(count):
        device_id = f"dev-{index:05}"
        state_dir = work / "agents" / device_id
        key = load_or_create_device_key(state_dir)
        request = enrollment_request(
            token.token,
            key,
            profile=PROFILE,
            hostname=device_id,
            labels={"fleet": "benchmark"},
            agent_version=AGENT_VERSION,
            device_id=device_id,
            transport="nats",
        )
        reply = services.enrollment.enroll(request, api_url="http://127.0.0.1:1")
        config_path = state_dir / "agent.toml"
        base = AgentConfig(device_id=device_id, state_dir=str(state_dir), profile=PROFILE)
        write_enrollment(reply, base=base, transport="nats", config_path=config_path)
        paths.append(config_path)
    return paths


async def wait_for(condition: Any, timeout_s: float, what: str, fleet_workers: list[Worker]) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        for worker in fleet_workers:
            if worker.process.poll() is not None:
                log = worker.log_path.read_text(errors="replace")[-3000:]
                raise RuntimeError(f"worker exited with {worker.process.returncode}:\n{log}")
        await asyncio.sleep(POLL_S)


def control_plane_config(args: argparse.Namespace, data_dir: Path) -> ControlPlaneConfig:
    overrides = {
        name: value
        for name, value in (
            ("rollout_tick_interval_s", args.tick_s),
            ("rollout_writes_per_tick", args.writes_per_tick),
            ("device_flush_interval_s", args.flush_s),
        )
        if value is not None
    }
    return ControlPlaneConfig(data_dir=str(data_dir), advertise=False, **overrides)


async def bench_fleet(args: argparse.Namespace, devices: int, budget: Budget) -> FleetStats:
    is_large = devices > args.real_acceptance_max
    rounds = args.large_runs if is_large else args.runs
    with tempfile.TemporaryDirectory(prefix="edgefabric-bench-fleet-") as tmp:
        work = Path(tmp)
        config = control_plane_config(args, work / "data")
        authority = BrokerAuthority.load_or_create(config.broker_auth_dir)
        monitor_port = free_port()
        broker = EmbeddedBroker(
            config.broker_dir,
            extra_config=authority.server_config(config.broker_dir / "jwt")
            + f'http: "127.0.0.1:{monitor_port}"\n',
        )
        releases = CompiledReleases(work / "builds", work / "datasets")
        with broker:
            db = open_data_dir(config)
            try:
                bus = NatsBus(
                    broker.nats_url, name="control-plane", user_auth=authority.service_credentials()
                )
                services = Services.build(
                    config,
                    db,
                    SystemClock(),
                    bus=bus,
                    broker_authority=authority,
                    endpoints=Endpoints(api_url="http://127.0.0.1:1", nats_url=broker.nats_url),
                    artifacts=releases,
                )
                async with services.lifespan(create_app(config, services)), observing(bus) as observer:
                    started = time.perf_counter()
                    config_paths = await asyncio.to_thread(enroll_devices, services, work, devices)
                    enroll_s = time.perf_counter() - started
                    print(f"N={devices}: enrolled in {enroll_s:.1f} s", file=sys.stderr)
                    with workers_running(
                        config_paths,
                        work,
                        min(args.workers, devices),
                        shared_sessions=is_large,
                        max_s=args.worker_max_s,
                        profile_dir=args.profile_dir,
                    ) as workers:
                        started = time.perf_counter()
                        await wait_for(
                            lambda: len(observer.reporting) >= devices,
                            args.op_timeout_s,
                            "every agent's first reported state",
                            workers,
                        )
                        ready_s = time.perf_counter() - started
                        print(f"N={devices}: {devices} agents reported in {ready_s:.1f} s", file=sys.stderr)
                        fleet = Fleet(
                            args, services, releases, broker, monitor_port, observer, workers, devices
                        )
                        runs = [await fleet.rollout("warm-up", "single")]
                        print_run(runs[-1])
                        planned = [
                            (f"run {i + 1}", variant) for i in range(rounds) for variant in args.variants
                        ]
                        for label, variant in planned:
                            if runs[-1].state != RolloutState.COMPLETED or not budget.allows():
                                break  # a failed rollout stays live while it rolls back
                            runs.append(await fleet.rollout(label, variant))
                            print_run(runs[-1])
                        archive_bytes = next(t.size_bytes for t in services.releases.get(MODEL, "1").targets)
                        worker_rss = [rss_mib(w.process.pid) for w in workers]
            finally:
                db.close()
    return FleetStats(
        devices=devices,
        workers=min(args.workers, devices),
        real_acceptance=not is_large,
        archive_bytes=archive_bytes,
        enroll_s=round(enroll_s, 2),
        agents_ready_s=round(ready_s, 2),
        worker_rss_mib=worker_rss,
        runs=runs,
        summaries=[summarize(variant, runs) for variant in args.variants],
    )


def summarize(variant: str, runs: list[RunStats]) -> VariantSummary:
    timed = [r for r in runs if r.variant == variant and r.label != "warm-up"]

    def median(values: list[float | None]) -> float | None:
        present = [v for v in values if v is not None]
        return round(statistics.median(present), 3) if present else None

    def cores(pick: str) -> float:
        values = [getattr(r.cpu, pick) / r.cpu.wall_s for r in timed if r.cpu.wall_s > 0]
        return round(statistics.median(values), 2) if values else 0.0

    def per_device_ms(pick: str) -> float:
        values = [getattr(r.cpu, pick) / r.devices * 1000 for r in timed]
        return round(statistics.median(values), 1) if values else 0.0

    return VariantSummary(
        variant=variant,
        runs=len(timed),
        median_p50_s=median([r.p50_s for r in timed]),
        median_p95_s=median([r.p95_s for r in timed]),
        median_max_s=median([r.max_s for r in timed]),
        median_completed_s=median([r.completed_s for r in timed]),
        median_writes_per_s=median([r.writes_per_s for r in timed]),
        median_agent_p50_s=median([r.agent_p50_s for r in timed]),
        median_cores={
            name: cores(pick)
            for name, pick in (
                ("control_plane", "control_plane_s"),
                ("broker", "broker_s"),
                ("agents", "agents_s"),
                ("other", "other_s"),
            )
        },
        median_cpu_ms_per_device={
            name: per_device_ms(pick)
            for name, pick in (
                ("control_plane", "control_plane_s"),
                ("broker", "broker_s"),
                ("agents", "agents_s"),
            )
        },
        all_converged=bool(timed) and all(r.converged == r.devices and r.state == "completed" for r in timed),
    )


# --- main ------------------------------------------------------------------------------------------


def machine_info() -> Machine:
    cpu_model = "unknown"
    memory_gib = 0.0
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory_gib = round(int(line.split()[1]) / 1024**2, 1)
    try:
        out = subprocess.run(
            [str(find_nats_server()), "--version"], capture_output=True, text=True, timeout=10, check=False
        )
        nats_server = out.stdout.strip() or out.stderr.strip() or "unknown"
    except (FabricError, OSError, subprocess.TimeoutExpired):
        nats_server = "unknown"
    return Machine(
        usable_cpus=len(os.sched_getaffinity(0)),
        cpu_model=cpu_model,
        memory_gib=memory_gib,
        platform=platform.platform(),
        python=platform.python_version(),
        nats_server=nats_server,
        nats_py=importlib.metadata.version("nats-py"),
        onnxruntime=importlib.metadata.version("onnxruntime"),
    )


async def run(args: argparse.Namespace) -> Report:
    budget = Budget(args.budget_s)
    fleets = []
    for devices in args.sizes:
        if not budget.allows():
            break
        fleets.append(await bench_fleet(args, devices, budget))
    defaults = control_plane_config(args, Path("unused"))
    return Report(
        benchmark="fleet",
        date=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        command=" ".join(["python", *sys.argv]),
        machine=machine_info(),
        engine=EngineSettings(
            rollout_tick_interval_s=defaults.rollout_tick_interval_s,
            rollout_writes_per_tick=defaults.rollout_writes_per_tick,
            device_flush_interval_s=defaults.device_flush_interval_s,
        ),
        fleets=fleets,
        target_s=TARGET_S,
        budget_exhausted=budget.exhausted,
    )


def fmt(value: float | None, spec: str = ".2f") -> str:
    return "-" if value is None else format(value, spec)


def print_run(r: RunStats) -> None:
    waves = ", ".join(f"w{w.position} {fmt(w.started_s)}-{fmt(w.finished_s)} s" for w in r.waves)
    print(
        f"  {r.label} {r.variant} v{r.version}: {r.state}, {r.converged}/{r.devices} converged, "
        f"p50 {fmt(r.p50_s)} p95 {fmt(r.p95_s)} max {fmt(r.max_s)} completed {fmt(r.completed_s)} s; "
        f"{r.desired_writes} writes {fmt(r.first_write_s)}-{fmt(r.last_write_s)} s "
        f"({fmt(r.writes_per_s, '.0f')}/s); agent p50 {fmt(r.agent_p50_s)} p95 {fmt(r.agent_p95_s)} s; "
        f"{r.artifact_bytes / 1e6:.0f} MB in {r.downloads} downloads; waves {waves}; "
        f"cpu s cp {r.cpu.control_plane_s} broker {r.cpu.broker_s} agents {r.cpu.agents_s} "
        f"other {r.cpu.other_s} over {r.cpu.wall_s} s (load {r.load_avg_1m})"
        + (f"\n    stopped: {r.reason}" if r.reason else "")
        + "".join(f"\n    {n} x {error}" for error, n in r.failures.items()),
        file=sys.stderr,
    )


def print_report(report: Report) -> None:
    m, e = report.machine, report.engine
    print(f"\nFleet rollout benchmark, {report.date}")
    print(
        f"machine: {m.usable_cpus} usable CPUs ({m.cpu_model}), {m.memory_gib} GiB, {m.platform}, "
        f"Python {m.python}, {m.nats_server}, nats-py {m.nats_py}, onnxruntime {m.onnxruntime}"
    )
    print(
        f"engine: tick {e.rollout_tick_interval_s:g} s, {e.rollout_writes_per_tick} writes per tick, "
        f"device flush {e.device_flush_interval_s:g} s"
    )
    for f in report.fleets:
        acceptance = "real acceptance" if f.real_acceptance else "shared ORT session per worker (stand-in)"
        print(
            f"\nN = {f.devices}: {f.workers} worker processes, {acceptance}; archive {f.archive_bytes:,} B; "
            f"enrolled in {f.enroll_s:.1f} s, agents reported in {f.agents_ready_s:.1f} s; "
            f"worker RSS {', '.join(f'{x:.0f}' for x in f.worker_rss_mib)} MiB"
        )
        print(
            f"{'run':<9} {'variant':<7} {'state':<10} {'conv':>5} {'p50 s':>6} {'p95 s':>6} {'max s':>6} "
            f"{'done s':>6} {'writes/s':>8} {'agent p50':>9} {'MB':>6} "
            f"{'cores cp/broker/agents/other':>29}"
        )
        for r in f.runs:
            wall = r.cpu.wall_s or 1.0
            cores = "/".join(
                f"{x / wall:.2f}"
                for x in (r.cpu.control_plane_s, r.cpu.broker_s, r.cpu.agents_s, r.cpu.other_s)
            )
            print(
                f"{r.label:<9} {r.variant:<7} {r.state:<10} {r.converged:>5} {fmt(r.p50_s):>6} "
                f"{fmt(r.p95_s):>6} {fmt(r.max_s):>6} {fmt(r.completed_s):>6} "
                f"{fmt(r.writes_per_s, '.0f'):>8} {fmt(r.agent_p50_s):>9} {r.artifact_bytes / 1e6:>6.1f} "
                f"{cores:>29}"
            )
        for s in f.summaries:
            met = ""
            if f.devices == TARGET_DEVICES and s.median_max_s is not None:
                verdict = "met" if s.median_max_s <= report.target_s else "MISSED"
                met = f"; target <= {report.target_s:g} s: {verdict}"
            print(
                f"median of {s.runs} {s.variant}: p50 {fmt(s.median_p50_s)} p95 {fmt(s.median_p95_s)} "
                f"max {fmt(s.median_max_s)} completed {fmt(s.median_completed_s)} s, "
                f"{fmt(s.median_writes_per_s, '.0f')} writes/s, cores {s.median_cores}, "
                f"CPU ms per device {s.median_cpu_ms_per_device}"
                f"{'' if s.all_converged else ', NOT ALL CONVERGED'}{met}"
            )
    if report.budget_exhausted:
        print("\nWARNING: --budget-s ran out; some fleets have fewer runs than asked")


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Rollout convergence of a fleet of real agents.")
    parser.add_argument("--sizes", type=positive_int, nargs="+", default=[100, 1000], help="fleet sizes")
    parser.add_argument("--runs", type=positive_int, default=3, help="rounds per fleet (real acceptance)")
    parser.add_argument("--large-runs", type=positive_int, default=1, help="rounds per fleet above it")
    parser.add_argument(
        "--variants",
        nargs="+",
        choices=sorted(VARIANTS),
        default=["waves", "single"],
        help="one rollout each",
    )
    parser.add_argument("--workers", type=positive_int, default=4, help="agent worker processes")
    parser.add_argument(
        "--real-acceptance-max",
        type=int,
        default=100,
        help="largest fleet whose agents each open their own ORT session (above: one per worker)",
    )
    parser.add_argument("--tick-s", type=float, help="override rollout_tick_interval_s")
    parser.add_argument("--writes-per-tick", type=positive_int, help="override rollout_writes_per_tick")
    parser.add_argument("--flush-s", type=float, help="override device_flush_interval_s")
    parser.add_argument("--op-timeout-s", type=float, default=300.0, help="limit for any single wait")
    parser.add_argument("--budget-s", type=float, default=1800.0, help="no new rollout after this long")
    parser.add_argument("--worker-max-s", type=float, default=3600.0, help="a worker stops after this long")
    parser.add_argument("--json-out", type=Path, default=DEFAULT_JSON, help="where to write the JSON report")
    parser.add_argument("--profile-dir", type=Path, help="run the workers under cProfile, stats here")
    parser.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def _exit_on_signal(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker is not None:
        return worker_main(args.worker)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    signal.signal(signal.SIGTERM, _exit_on_signal)  # unwind: stop the workers and the broker, remove files
    try:
        report = asyncio.run(run(args))
    except (FabricError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_FAILED
    except TimeoutError as e:
        print(f"error: {e or 'an operation'} within --op-timeout-s {args.op_timeout_s:g}", file=sys.stderr)
        return EXIT_FAILED
    print_report(report)
    args.json_out.parent.mkdir(parents=True, exist_ok=True)
    args.json_out.write_bytes(msgspec.json.format(msgspec.json.encode(report), indent=2) + b"\n")
    print(f"\nJSON report: {args.json_out}")
    is_ok = all(r.converged == r.devices and r.state == "completed" for f in report.fleets for r in f.runs)
    return EXIT_OK if is_ok else EXIT_CHECK_FAILED


if __name__ == "__main__":
    sys.exit(main())
