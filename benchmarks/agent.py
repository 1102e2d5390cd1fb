"""Edge agent benchmark: in-process predict overhead, OIP HTTP latency, batched throughput, footprint.

Two models, both installed the way a device installs them (compiled or built, signed with
`init_repository`/`sign_release`, verified and extracted by `ReleaseVerifier` into a `ModelStore`):

- `digits`: `digits_cnn()` compiled by `compile_model` for cpu-x86_64 (INT8 static QDQ, ~15 KB);
  a tiny model, so per-request overhead dominates everything measured on it.
- `wide`: an FP32 MLP 64 -> 2048 -> 2048 -> 10 (ReLU; seeded He-normal random weights, 4.3 M
  parameters, 17 MB) built here because the digits models are too small for batching to matter.
  It is not compiled; its manifest is written here (FP32, golden outputs from ORT) and signed.
  Both take a dynamic batch dimension, so the agent's dynamic batcher applies to both.

What it measures (every variant in its own block after `--warmup` untimed calls, never interleaved):

1. In process, batch-1 requests, `--n` timed calls each, per model: raw ORT `InferenceSession.run`
   (a second session with the same default options as the agent's) vs our `open_session(...).run`,
   a no-op `run_in_executor` round trip (the thread hop alone), `await ModelServer.infer` with
   batching off (max_batch_size=1: one thread-pool hop per call), the same with the daemon's
   `TelemetryRecorder`, and with batching on for a single caller (max_batch_size=8 with the
   daemon's default 2 ms queue delay, and with 0 ms). The raw block runs again at the end to show
   drift. Ratio = variant p50 / raw p50 (first raw block).
2. OIP HTTP on loopback against the real agent (`python -m edge_agent.cli run`, offline, batching
   off), `--n` sequential requests per client: `AgentClient.infer` (urllib, one connection per
   request) and an `http.client.HTTPConnection` keep-alive client that encodes and decodes with the
   same `edge_agent.oip` codec. Added latency = HTTP p50 - in-process p50 (batching off, with the
   recorder: the daemon's path minus the HTTP layer). A keep-alive p50 near 44 ms means the
   listener lost TCP_NODELAY again (responses then wait for the client's delayed ACK; fixed in
   4634350, found by this benchmark).
3. Throughput on `wide`, samples/s: raw ORT sequential batch 1, raw ORT batch `--clients` (the upper
   bound), then `--clients` concurrent callers in process (coroutines on `ModelServer.infer`, with the
   mean batch size the session saw) and over HTTP against the real agent (asyncio raw-socket
   keep-alive connections, one per client, `--load-requests` requests each) for every
   `--batch-configs` entry (`1:0` = batching off; a third field sets the agent's `inference_threads`,
   i.e. ORT's intra-op threads). The concurrent runs repeat `--rounds` times (configs in alternating
   order, a fresh agent each run); a row is the run with the median samples/s, and lists every
   round's samples/s. Every HTTP answer is
   decoded and its top-1 checked against raw ORT batch 1 for the same input. CPU time of the agent
   (all threads, and its main thread = event loop) and of this process (the load generator) is
   read from /proc over the timed part, to show where the cores go.
4. Footprint. With `--install-size` (default on): a fresh venv, `pip install <copy of this
   source>[agent]` (downloads from the configured index), `du -sb` of its site-packages and the 10
   largest distributions (sizes from each one's RECORD). Then the agent started offline with only
   `digits` installed (the daemon's default config), in this environment and in that venv (what a
   device runs: optional packages such as boto3, which securesystemslib imports when present, are
   absent there), idle `--idle-s` after /v2/health/ready: VmRSS, VmHWM, RssAnon, RssFile, Pss; again
   after 200 requests; plus reference processes (bare Python; Python + numpy + onnxruntime; and with
   the digits session open).

Targets (issue "edge agent", 2 cores): in-process predict p50 <= 1.05x raw ORT; OIP HTTP adds
<= 1 ms p50 over in-process; >= 2x raw sequential ORT throughput at 32 clients with batching on;
idle agent RSS <= 80 MB with ORT loaded and one small model active.

The 2 cores are shared by the agent and the load generator, as on a device whose application
calls the agent. The report gives the CPU time other processes used during the run (/proc/stat
minus this process and its children); above ~0.1 cores the timings are not clean.

Every loop is bounded by a count, every network operation by `--op-timeout-s`, every agent start by
`--start-timeout-s`, and the whole run by `--budget-s` (a block that runs out stops early and the
report says so). Everything listens on 127.0.0.1 and lives in one temporary directory.

Exit codes: 0 done (targets met or not: see the report); 1 a check failed (an HTTP error or a wrong
answer); 2 bad usage (argparse); 3 the agent or the model setup failed.

Usage: `python benchmarks/agent.py [--n 2000] [--clients 32] [--load-requests 150]
[--batch-configs 1:0,8:2,16:2,32:0,32:1,32:2,32:5,32:2:1] [--no-install-size]
[--json-out benchmarks/results/agent.json]` (see `--help`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import hashlib
import http.client
import importlib.metadata
import importlib.util
import itertools
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import onnx
import onnxruntime as ort
from numpy.typing import NDArray
from onnx import TensorProto, helper, numpy_helper

from edge_agent import oip
from edge_agent.client import AgentClient
from edge_agent.serving import ModelServer, ServedModel
from edge_agent.store import ModelStore
from edge_agent.telemetry.recorder import TelemetryRecorder
from hardware_profiles.runtimes import InferenceSession, open_session, settings_from_manifest
from model_compiler.artifact import file_entry, write_manifest
from model_compiler.compiler import CompileRequest, compile_model
from model_compiler.golden import GOLDEN_FILENAME, write_golden
from model_compiler.sample_models import digits_cnn
from model_compiler.signing.repository import init_repository, sign_release
from model_compiler.verification import ReleaseVerifier
from protocols.errors import FabricError
from protocols.manifest import (
    MANIFEST_FILENAME,
    AcceptanceSpec,
    ArtifactManifest,
    OutputHistogram,
    TensorSpec,
    ValidationMetrics,
    manifest_decoder,
)
from protocols.manifest import LatencyStats as ManifestLatency

EXIT_OK, EXIT_CHECK_FAILED, EXIT_SETUP_FAILED = 0, 1, 3
PROFILE = "cpu-x86_64"
VERSION = "1"
MIB = 1024 * 1024
WIDE_HIDDEN = 2048
REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_JSON = Path(__file__).resolve().parent / "results" / "agent.json"
PACKAGE_DIRS = ("protocols", "hardware_profiles", "model_compiler", "edge_agent", "control_plane")

Feeds = dict[str, NDArray[Any]]


class Machine(msgspec.Struct, frozen=True, kw_only=True):
    cpu_count: int | None
    usable_cpus: int
    cpu_model: str
    has_vnni: bool
    platform: str
    python: str
    onnxruntime: str
    numpy: str
    uvicorn: str
    http_parser: str


class LatencyStats(msgspec.Struct, frozen=True, kw_only=True):
    what: str
    n: int
    p50_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float
    mean_ms: float
    p50_vs_raw: float | None = None
    added_p50_ms: float | None = None


class ModelLatency(msgspec.Struct, frozen=True, kw_only=True):
    model: str
    description: str
    in_process: list[LatencyStats]
    http: list[LatencyStats]


class ThroughputStats(msgspec.Struct, frozen=True, kw_only=True):
    variant: str
    clients: int
    requests: int
    samples: int
    seconds: float
    samples_per_s: float
    vs_sequential: float
    p50_ms: float | None = None
    p99_ms: float | None = None
    mean_batch_size: float | None = None
    samples_per_s_rounds: list[float] = msgspec.field(default_factory=list)
    """samples/s of every round (the row is the round with the median; the lower one of two)."""
    server_cores: float | None = None
    """CPU used by the serving process (the agent; in process: this benchmark), in cores."""
    server_loop_cores: float | None = None
    """CPU used by the agent's main thread (event loop: uvicorn/h11, OIP JSON, batcher), in cores."""
    client_cores: float | None = None
    """CPU used by this benchmark process as the load generator, in cores (HTTP rows only)."""
    server_cpu_us_per_request: float | None = None
    errors: int = 0
    wrong_top1: int = 0
    max_abs_diff: float | None = None


class MemoryStats(msgspec.Struct, frozen=True, kw_only=True):
    what: str
    vm_rss_mib: float
    vm_hwm_mib: float
    rss_anon_mib: float
    rss_file_mib: float
    pss_mib: float | None
    threads: int


class PackageSize(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    version: str
    bytes: int


class InstallSize(msgspec.Struct, frozen=True, kw_only=True):
    site_packages_bytes: int = 0
    without_pip_setuptools_bytes: int = 0
    distributions: int = 0
    largest: list[PackageSize] = msgspec.field(default_factory=list)
    install_s: float = 0.0
    error: str | None = None


class Report(msgspec.Struct, frozen=True, kw_only=True):
    benchmark: str
    date: str
    command: str
    machine: Machine
    latency: list[ModelLatency]
    throughput_model: str
    throughput: list[ThroughputStats]
    agent_start_s: float | None
    memory: list[MemoryStats]
    install_size: InstallSize | None
    load_average_start: tuple[float, float, float]
    other_processes_cores: float | None
    """CPU used by processes other than this benchmark and its children during the run, in cores
    (machine busy time from /proc/stat minus `os.times()`); above ~0.1 the timings are not clean."""
    budget_exhausted: bool


class Budget:
    """A wall-clock budget for the whole run; blocks stop starting new runs once it is spent."""

    def __init__(self, seconds: float) -> None:
        self.deadline = time.monotonic() + seconds
        self.exhausted = False

    def allows(self) -> bool:
        if time.monotonic() >= self.deadline:
            self.exhausted = True
        return not self.exhausted


class CheckFailedError(Exception):
    """An HTTP error status or a wrong answer from the agent."""


class SetupError(Exception):
    """The models could not be built or installed, or the agent did not come up."""


@dataclass(frozen=True)
class ServingConfig:
    """`max_batch_size`, `max_queue_delay_ms` and `inference_threads` (None: ORT's default) of a run."""

    batch: int
    delay_ms: float
    threads: int | None = None

    @property
    def label(self) -> str:
        label = "batching off" if self.batch <= 1 else f"batching on ({self.batch}, {self.delay_ms:g} ms)"
        return label + (f", {self.threads} ORT thread(s)" if self.threads else "")

    def toml(self) -> str:
        threads = f"inference_threads = {self.threads}\n" if self.threads else ""
        return f"max_batch_size = {self.batch}\nmax_queue_delay_ms = {float(self.delay_ms)}\n{threads}"


DAEMON_DEFAULTS = ServingConfig(batch=8, delay_ms=2.0)
BATCHING_OFF = ServingConfig(batch=1, delay_ms=0.0)


@dataclass(frozen=True)
class BenchModel:
    """One installed artifact and batch-1 inputs for it (`inputs[i]` has one sample)."""

    name: str
    description: str
    directory: Path
    manifest: ArtifactManifest
    inputs: list[Feeds]

    @property
    def model_path(self) -> Path:
        return self.directory / self.manifest.model_file

    @property
    def input_name(self) -> str:
        return self.manifest.inputs[0].name


# --- machine -----------------------------------------------------------------------------------------


def machine_info() -> Machine:
    cpu_model, flags = "unknown", set()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and cpu_model == "unknown":
                cpu_model = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
    parser = "httptools" if importlib.util.find_spec("httptools") else "h11 (pure Python; httptools absent)"
    return Machine(
        cpu_count=os.cpu_count(),
        usable_cpus=len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 0,
        cpu_model=cpu_model,
        has_vnni=bool(flags & {"avx512_vnni", "avx_vnni"}),
        platform=platform.platform(),
        python=platform.python_version(),
        onnxruntime=ort.__version__,
        numpy=np.__version__,
        uvicorn=importlib.metadata.version("uvicorn"),
        http_parser=parser + (", uvloop" if importlib.util.find_spec("uvloop") else ", asyncio loop"),
    )


# --- models: build, sign, verify, install ---------------------------------------------------------------


def wide_mlp(seed: int = 0) -> onnx.ModelProto:
    """FP32 MLP 64 -> 2048 -> 2048 -> 10 with ReLU on "pixels" [N, 64] -> "logits" [N, 10]."""
    rng = np.random.default_rng(seed)
    sizes = [64, WIDE_HIDDEN, WIDE_HIDDEN, 10]
    nodes, initializers, previous = [], [], "pixels"
    for i, (fan_in, fan_out) in enumerate(itertools.pairwise(sizes)):
        is_last = i == len(sizes) - 2
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
        "wide_mlp",
        [helper.make_tensor_value_info("pixels", TensorProto.FLOAT, ["N", 64])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])],
        initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    return model


def write_wide_artifact(out_dir: Path, template: ArtifactManifest, pixels: NDArray[np.float32]) -> None:
    """`out_dir/<profile>/` with model.onnx, golden.npz and a manifest describing this FP32 build."""
    directory = out_dir / PROFILE
    directory.mkdir(parents=True)
    onnx.save_model(wide_mlp(), directory / "model.onnx")
    session = ort.InferenceSession(str(directory / "model.onnx"), providers=["CPUExecutionProvider"])
    logits = session.run(["logits"], {"pixels": pixels})[0]
    write_golden(directory, {"pixels": pixels[:8]}, {"logits": logits[:8]})
    times = []
    for i in range(50):
        started = time.perf_counter()
        session.run(["logits"], {"pixels": pixels[i : i + 1]})
        times.append((time.perf_counter() - started) * 1000)
    q = statistics.quantiles(times, n=100, method="inclusive")
    described = f"onnxruntime {ort.__version__} CPUExecutionProvider"
    manifest = msgspec.structs.replace(
        template,
        model="wide",
        version=VERSION,
        precision="fp32",
        recipe="benchmark: hand-built FP32 MLP 64-2048-2048-10, not compiled",
        model_file="model.onnx",
        files=(file_entry(directory, "model.onnx"), file_entry(directory, GOLDEN_FILENAME)),
        inputs=(TensorSpec(name="pixels", dtype="float32", shape=(None, 64)),),
        outputs=(TensorSpec(name="logits", dtype="float32", shape=(None, 10)),),
        validation=ValidationMetrics(
            samples=len(pixels),
            top1_agreement=1.0,
            max_abs_error=0.0,
            cosine_similarity=1.0,
            validated_on=described,
        ),
        host_latency=ManifestLatency(p50_ms=q[49], p95_ms=q[94], runs=50, measured_on=described),
        acceptance=AcceptanceSpec(
            golden_file=GOLDEN_FILENAME, max_abs_error=1e-3, min_top1_agreement=1.0, p95_latency_ms=250.0
        ),
        reference_histogram=OutputHistogram(
            kind="top1", counts=tuple(int(c) for c in np.bincount(logits.argmax(axis=1), minlength=10))
        ),
        source_model_sha256=hashlib.sha256((directory / "model.onnx").read_bytes()).hexdigest(),
        compiler_versions={},
        runtime_versions={"onnxruntime": ort.__version__},
    )
    write_manifest(directory, manifest)


@dataclass(frozen=True)
class Releases:
    repo: Path
    sha256: dict[str, str]  # model name -> the cpu-x86_64 target's digest


def build_and_sign(work: Path) -> Releases:
    """Compile digits_cnn, build the wide MLP, sign both releases in a fresh repository."""
    sample = digits_cnn().save(work / "source" / "digits")
    report = compile_model(
        CompileRequest(
            model_path=sample.model_path,
            profiles=(PROFILE,),
            out_dir=work / "build" / "digits",
            model_name="digits",
            version=VERSION,
            calibration_path=sample.calibration_path,
            validation_path=sample.validation_path,
        )
    )
    if not report.is_success:
        raise SetupError(f"digits_cnn did not compile for {PROFILE}: {[r.reason for r in report.results]}")
    template = manifest_decoder.decode((work / "build" / "digits" / PROFILE / MANIFEST_FILENAME).read_bytes())
    write_wide_artifact(work / "build" / "wide", template, validation_pixels(work))
    repo = work / "repo"
    init_repository(repo)
    digests = {}
    for name in ("digits", "wide"):
        release = sign_release(repo, work / "build" / name, name, VERSION)
        digests[name] = release.targets[0].sha256
    return Releases(repo=repo, sha256=digests)


def validation_pixels(work: Path) -> NDArray[np.float32]:
    with np.load(work / "source" / "digits" / "validation.npz", allow_pickle=False) as data:
        images = data["image"]
    return np.ascontiguousarray(images.reshape(len(images), 64), dtype=np.float32)


def install(releases: Releases, state_dir: Path, names: tuple[str, ...]) -> ModelStore:
    """Verify each release against the repository's root and install it as the agent would."""
    store = ModelStore(state_dir)
    trusted_root = (releases.repo / "metadata" / "1.root.json").read_bytes()
    for name in names:
        sha256 = releases.sha256[name]
        verifier = ReleaseVerifier.for_local_directory(trusted_root, state_dir / "bench-tuf", releases.repo)
        verified = verifier.verify_and_download(
            name, VERSION, PROFILE, min_counter=0, dest_dir=store.object_dir(sha256)
        )
        store.record_signed_target(verified.target)
        store.activate(name, sha256)
    return store


def bench_models(work: Path, store: ModelStore) -> dict[str, BenchModel]:
    pixels = validation_pixels(work)
    shaped = {"digits": pixels.reshape(-1, 1, 8, 8), "wide": pixels}
    descriptions = {
        "digits": "digits_cnn, INT8 static QDQ compiled for cpu-x86_64 (tiny: ~15 KB)",
        "wide": f"FP32 MLP 64-{WIDE_HIDDEN}-{WIDE_HIDDEN}-10 (4.3 M parameters, 17 MB)",
    }
    models = {}
    for name, data in shaped.items():
        installed = store.current(name)
        if installed is None:
            raise SetupError(f"{name} is not installed in {store.root}")
        inputs = [
            {installed.manifest.inputs[0].name: np.ascontiguousarray(data[i : i + 1])} for i in range(64)
        ]
        models[name] = BenchModel(name, descriptions[name], installed.directory, installed.manifest, inputs)
    return models


# --- statistics ----------------------------------------------------------------------------------------


def latency_stats(what: str, samples_s: list[float], **extra: float | None) -> LatencyStats:
    ms = sorted(s * 1000 for s in samples_s)
    q = statistics.quantiles(ms, n=100, method="inclusive")
    return LatencyStats(
        what=what,
        n=len(ms),
        p50_ms=round(q[49], 4),
        p95_ms=round(q[94], 4),
        p99_ms=round(q[98], 4),
        max_ms=round(ms[-1], 4),
        mean_ms=round(statistics.fmean(ms), 4),
        **{k: None if v is None else round(v, 4) for k, v in extra.items()},
    )


def timed_sync(
    call: Callable[[Feeds], object], inputs: list[Feeds], n: int, warmup: int, budget: Budget
) -> list[float]:
    for i in range(warmup):
        call(inputs[i % len(inputs)])
    times = []
    for i in range(n):
        if i % 100 == 0 and not budget.allows():
            break
        feeds = inputs[i % len(inputs)]
        started = time.perf_counter()
        call(feeds)
        times.append(time.perf_counter() - started)
    return times


async def timed_async(
    call: Callable[[Feeds], Awaitable[object]], inputs: list[Feeds], n: int, warmup: int, budget: Budget
) -> list[float]:
    for i in range(warmup):
        await call(inputs[i % len(inputs)])
    times = []
    for i in range(n):
        if i % 100 == 0 and not budget.allows():
            break
        feeds = inputs[i % len(inputs)]
        started = time.perf_counter()
        await call(feeds)
        times.append(time.perf_counter() - started)
    return times


def raw_session(model: BenchModel) -> tuple[ort.InferenceSession, list[str]]:
    """A second ORT session on the same file with the options `open_session` uses (the defaults)."""
    session = ort.InferenceSession(
        str(model.model_path), sess_options=ort.SessionOptions(), providers=["CPUExecutionProvider"]
    )
    return session, [o.name for o in session.get_outputs()]


# --- 1. in process ---------------------------------------------------------------------------------------


async def bench_in_process(model: BenchModel, args: argparse.Namespace, budget: Budget) -> list[LatencyStats]:
    raw, names = raw_session(model)
    ours = open_session(model.model_path, settings_from_manifest(model.manifest))
    served = ServedModel(model.name, model.manifest, ours)
    n, warmup = args.n, args.warmup
    blocks: list[tuple[str, list[float]]] = []
    blocks.append(
        (
            "raw onnxruntime InferenceSession.run",
            timed_sync(lambda f: raw.run(names, f), model.inputs, n, warmup, budget),
        )
    )
    blocks.append(
        (
            "open_session(...).run (our wrapper, no thread hop)",
            timed_sync(ours.run, model.inputs, n, warmup, budget),
        )
    )
    with ThreadPoolExecutor(max_workers=4) as pool:  # what ModelServer uses, running nothing
        loop = asyncio.get_running_loop()
        hop = await timed_async(lambda f: loop.run_in_executor(pool, len, f), model.inputs, n, warmup, budget)
    blocks.append(("run_in_executor round trip of a no-op (the thread hop alone)", hop))
    servers = (
        ("ModelServer.infer, batching off (max_batch_size=1)", dict(max_batch_size=1), False),
        ("ModelServer.infer, batching off + TelemetryRecorder (daemon path)", dict(max_batch_size=1), True),
        (
            "ModelServer.infer, batching on (8, 2 ms: daemon default), 1 caller",
            dict(max_batch_size=8, max_queue_delay_ms=2.0),
            True,
        ),
        (
            "ModelServer.infer, batching on (8, 0 ms), 1 caller",
            dict(max_batch_size=8, max_queue_delay_ms=0.0),
            True,
        ),
    )
    for what, options, with_recorder in servers:
        server = ModelServer(recorder=TelemetryRecorder() if with_recorder else None, **options)
        await server.activate(served)
        try:
            times = await timed_async(
                lambda f, s=server: s.infer(model.name, f), model.inputs, n, warmup, budget
            )
        finally:
            await server.close()
        blocks.append((what, times))
    blocks.append(
        (
            "raw onnxruntime again (drift check)",
            timed_sync(lambda f: raw.run(names, f), model.inputs, n, warmup, budget),
        )
    )
    raw_p50 = statistics.median(blocks[0][1])
    return [
        latency_stats(what, times, p50_vs_raw=statistics.median(times) / raw_p50) for what, times in blocks
    ]


# --- the agent as a subprocess ------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RunningAgent:
    """`python -m edge_agent.cli run --config F` (offline: no broker); ready when /v2/health/ready is 200."""

    def __init__(
        self,
        state_dir: Path,
        *,
        serving: ServingConfig,
        start_timeout_s: float,
        python: Path,
        cwd: Path,
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = state_dir.parent / f"{state_dir.name}-{self.port}.toml"
        config.write_text(
            f'device_id = "bench"\nstate_dir = "{state_dir}"\nprofile = "{PROFILE}"\n'
            f"http_port = {self.port}\n{serving.toml()}"
        )
        self.log_path = config.with_suffix(".log")
        env = {k: v for k, v in os.environ.items() if not k.startswith("EDGEFABRIC_AGENT_")}
        started = time.monotonic()
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [
                    str(python),
                    *("-m", "edge_agent.cli", "run", "--config", str(config), "--log-level", "warning"),
                ],
                stdout=log,
                stderr=log,
                env=env,
                cwd=cwd,
            )
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        deadline = started + start_timeout_s
        while True:
            if self.process.poll() is not None:
                raise SetupError(f"agent exited with {self.process.returncode}: {self.log_tail()}")
            with (
                contextlib.suppress(OSError),
                opener.open(self.url + "/v2/health/ready", timeout=2) as response,
            ):
                if response.status == 200:
                    break
            if time.monotonic() > deadline:
                self.stop()
                raise SetupError(f"agent not ready after {start_timeout_s:g} s: {self.log_tail()}")
            time.sleep(0.05)
        self.start_s = time.monotonic() - started

    @property
    def pid(self) -> int:
        return self.process.pid

    def log_tail(self) -> str:
        return self.log_path.read_text(errors="replace")[-2000:] if self.log_path.exists() else ""

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


@contextlib.contextmanager
def running_agent(
    state_dir: Path,
    args: argparse.Namespace,
    serving: ServingConfig,
    *,
    python: Path = Path(sys.executable),
    cwd: Path = REPO_ROOT,
) -> Iterator[RunningAgent]:
    agent = RunningAgent(
        state_dir,
        serving=serving,
        start_timeout_s=args.start_timeout_s,
        python=python,
        cwd=cwd,
    )
    try:
        yield agent
    finally:
        agent.stop()


# --- 2. HTTP latency --------------------------------------------------------------------------------


def bench_http(
    agent: RunningAgent,
    model: BenchModel,
    in_process_p50_ms: float,
    args: argparse.Namespace,
    budget: Budget,
) -> list[LatencyStats]:
    """Sequential batch-1 requests; every answer's top-1 is checked against raw ORT."""
    client = AgentClient(agent.url, timeout_s=args.op_timeout_s)
    expected = {id(f): int(np.argmax(raw_top(model, f))) for f in model.inputs}

    def check(feeds: Feeds, outputs: Feeds) -> None:
        if int(np.argmax(next(iter(outputs.values())))) != expected[id(feeds)]:
            raise CheckFailedError(f"{model.name}: wrong top-1 over HTTP")

    def via_agent_client(feeds: Feeds) -> None:
        check(feeds, client.infer(model.name, feeds).outputs)

    path = f"/v2/models/{model.name}/infer"
    connection = http.client.HTTPConnection("127.0.0.1", agent.port, timeout=args.op_timeout_s)

    def post(feeds: Feeds) -> bytes:
        connection.request("POST", path, oip.encode_request(feeds), {"Content-Type": "application/json"})
        response = connection.getresponse()
        body = response.read()
        if response.status != 200:
            raise CheckFailedError(f"{model.name}: HTTP {response.status}: {body[:200]!r}")
        return body

    def via_keep_alive(feeds: Feeds) -> None:
        check(feeds, oip.decode_response(post(feeds))[1])

    rows = []
    try:
        sample_body = post(model.inputs[0])
        connection.close()  # uvicorn drops a connection idle for 5 s; the next request reconnects

        def codec_only(feeds: Feeds) -> None:
            oip.encode_request(feeds)
            oip.decode_response(sample_body)

        for what, call in (
            ("client-side OIP encode + decode only (no network)", codec_only),
            ("HTTP: AgentClient.infer (urllib, new connection per request)", via_agent_client),
            ("HTTP: http.client keep-alive + OIP codec", via_keep_alive),
        ):
            times = timed_sync(call, model.inputs, args.n, args.warmup, budget)
            added = None if call is codec_only else statistics.median(times) * 1000 - in_process_p50_ms
            rows.append(latency_stats(what, times, added_p50_ms=added))
    finally:
        connection.close()
    return rows


_RAW: dict[Path, tuple[ort.InferenceSession, list[str]]] = {}


def raw_outputs(model: BenchModel, feeds: Feeds) -> Feeds:
    if model.model_path not in _RAW:
        _RAW[model.model_path] = raw_session(model)
    session, names = _RAW[model.model_path]
    return dict(zip(names, session.run(names, feeds), strict=True))


def raw_top(model: BenchModel, feeds: Feeds) -> NDArray[Any]:
    return next(iter(raw_outputs(model, feeds).values()))


# --- 3. throughput ------------------------------------------------------------------------------------


def bench_raw_throughput(
    model: BenchModel, args: argparse.Namespace, budget: Budget
) -> list[ThroughputStats]:
    raw, names = raw_session(model)
    times = timed_sync(lambda f: raw.run(names, f), model.inputs, args.n, args.warmup, budget)
    sequential = len(times) / sum(times)
    batch = {model.input_name: np.concatenate([f[model.input_name] for f in model.inputs[: args.clients]])}
    batch_times = timed_sync(
        lambda f: raw.run(names, f), [batch], max(args.n // args.clients, 50), 20, budget
    )
    per_batch = statistics.median(batch_times)
    return [
        ThroughputStats(
            variant="raw ORT, sequential batch 1",
            clients=1,
            requests=len(times),
            samples=len(times),
            seconds=round(sum(times), 3),
            samples_per_s=round(sequential, 1),
            vs_sequential=1.0,
            p50_ms=round(statistics.median(times) * 1000, 4),
        ),
        ThroughputStats(
            variant=f"raw ORT, batch {args.clients} (upper bound)",
            clients=1,
            requests=len(batch_times),
            samples=len(batch_times) * args.clients,
            seconds=round(sum(batch_times), 3),
            samples_per_s=round(args.clients / per_batch, 1),
            vs_sequential=round(args.clients / per_batch / sequential, 2),
            p50_ms=round(per_batch * 1000, 4),
        ),
    ]


class CountingSession:
    """Wraps a session and records the batch size of every `run` (to show what the batcher did)."""

    def __init__(self, inner: InferenceSession) -> None:
        self._inner = inner
        self.inputs, self.outputs = inner.inputs, inner.outputs
        self.description, self.is_cpu_equivalent = inner.description, inner.is_cpu_equivalent
        self.batch_sizes: list[int] = []

    def run(self, feeds: Feeds) -> Feeds:
        self.batch_sizes.append(len(next(iter(feeds.values()))))
        return self._inner.run(feeds)


async def bench_in_process_concurrent(
    model: BenchModel, serving: ServingConfig, sequential: float, args: argparse.Namespace
) -> ThroughputStats:
    settings = settings_from_manifest(model.manifest, threads=serving.threads)
    session = CountingSession(open_session(model.model_path, settings))
    server = ModelServer(
        recorder=TelemetryRecorder(), max_batch_size=serving.batch, max_queue_delay_ms=serving.delay_ms
    )
    await server.activate(ServedModel(model.name, model.manifest, session))
    latencies: list[float] = []

    async def caller(client: int, count: int, record: bool) -> None:
        for i in range(count):
            feeds = model.inputs[(client * 7 + i) % len(model.inputs)]
            started = time.perf_counter()
            await asyncio.wait_for(server.infer(model.name, feeds), args.op_timeout_s)
            if record:
                latencies.append(time.perf_counter() - started)

    try:
        await asyncio.gather(*(caller(c, 5, False) for c in range(args.clients)))
        session.batch_sizes.clear()
        cpu_s = own_cpu_seconds()
        started = time.perf_counter()
        await asyncio.gather(*(caller(c, args.load_requests, True) for c in range(args.clients)))
        elapsed = time.perf_counter() - started
        cpu_s = own_cpu_seconds() - cpu_s
    finally:
        await server.close()
    total = args.clients * args.load_requests
    return ThroughputStats(
        variant=f"in process, {serving.label}",
        clients=args.clients,
        requests=total,
        samples=total,
        seconds=round(elapsed, 3),
        samples_per_s=round(total / elapsed, 1),
        vs_sequential=round(total / elapsed / sequential, 2),
        p50_ms=round(statistics.median(latencies) * 1000, 3),
        p99_ms=round(statistics.quantiles(latencies, n=100, method="inclusive")[98] * 1000, 3),
        mean_batch_size=round(statistics.fmean(session.batch_sizes), 2),
        server_cores=round(cpu_s / elapsed, 2),
        server_cpu_us_per_request=round(cpu_s / total * 1e6, 1),
    )


def cpu_seconds(pid: int, tid: int | None = None) -> float:
    """utime + stime of a process (or one of its threads) from /proc, in seconds."""
    path = f"/proc/{pid}/stat" if tid is None else f"/proc/{pid}/task/{tid}/stat"
    fields = Path(path).read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def own_cpu_seconds() -> float:
    ours = os.times()
    return ours.user + ours.system


@dataclass
class LoadResult:
    seconds: float
    latencies: list[float]
    errors: int
    wrong_top1: int
    max_abs_diff: float
    agent_cpu_s: float
    agent_loop_cpu_s: float
    client_cpu_s: float


async def http_load(pid: int, port: int, model: BenchModel, args: argparse.Namespace) -> LoadResult:
    """`--clients` keep-alive connections (asyncio sets TCP_NODELAY on them; each request is one write),
    `--load-requests` requests each after 5 warm-up requests; CPU is counted from the start signal."""
    bodies = [oip.encode_request(f) for f in model.inputs]
    expected = [raw_top(model, f)[0] for f in model.inputs]
    head = (
        f"POST /v2/models/{model.name}/infer HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        "Content-Type: application/json\r\nContent-Length: {}\r\n\r\n"
    )
    requests = [head.format(len(b)).encode() + b for b in bodies]
    latencies: list[float] = []
    errors = wrong = 0
    max_diff = 0.0
    barrier = asyncio.Barrier(args.clients + 1)

    async def exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, index: int) -> None:
        nonlocal errors, wrong, max_diff
        writer.write(requests[index])
        header = await reader.readuntil(b"\r\n\r\n")
        length = 0
        for line in header.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        body = await reader.readexactly(length)
        if header[9:12] != b"200":
            errors += 1
            return
        logits = next(iter(oip.decode_response(body)[1].values()))[0]
        wrong += int(np.argmax(logits) != np.argmax(expected[index]))
        max_diff = max(max_diff, float(np.max(np.abs(logits - expected[index]))))

    async def client(number: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            for i in range(5):
                await asyncio.wait_for(
                    exchange(reader, writer, (number + i) % len(requests)), args.op_timeout_s
                )
            await barrier.wait()
            for i in range(args.load_requests):
                index = (number * 7 + i) % len(requests)
                started = time.perf_counter()
                await asyncio.wait_for(exchange(reader, writer, index), args.op_timeout_s)
                latencies.append(time.perf_counter() - started)
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    tasks = [asyncio.create_task(client(c)) for c in range(args.clients)]
    await asyncio.wait_for(barrier.wait(), args.op_timeout_s)
    cpu = (cpu_seconds(pid), cpu_seconds(pid, pid), own_cpu_seconds())
    started = time.perf_counter()
    await asyncio.gather(*tasks)
    seconds = time.perf_counter() - started
    return LoadResult(
        seconds=seconds,
        latencies=latencies,
        errors=errors,
        wrong_top1=wrong,
        max_abs_diff=max_diff,
        agent_cpu_s=cpu_seconds(pid) - cpu[0],
        agent_loop_cpu_s=cpu_seconds(pid, pid) - cpu[1],
        client_cpu_s=own_cpu_seconds() - cpu[2],
    )


def http_row(
    state_dir: Path, model: BenchModel, serving: ServingConfig, sequential: float, args: argparse.Namespace
) -> ThroughputStats:
    with running_agent(state_dir, args, serving) as agent:
        load = asyncio.run(http_load(agent.pid, agent.port, model, args))
    total, seconds = len(load.latencies), load.seconds
    q = statistics.quantiles(load.latencies, n=100, method="inclusive")
    return ThroughputStats(
        variant=f"HTTP, {serving.label}",
        clients=args.clients,
        requests=total,
        samples=total,
        seconds=round(seconds, 3),
        samples_per_s=round(total / seconds, 1),
        vs_sequential=round(total / seconds / sequential, 2),
        p50_ms=round(q[49] * 1000, 3),
        p99_ms=round(q[98] * 1000, 3),
        server_cores=round(load.agent_cpu_s / seconds, 2),
        server_loop_cores=round(load.agent_loop_cpu_s / seconds, 2),
        client_cores=round(load.client_cpu_s / seconds, 2),
        server_cpu_us_per_request=round(load.agent_cpu_s / total * 1e6, 1),
        errors=load.errors,
        wrong_top1=load.wrong_top1,
        max_abs_diff=round(load.max_abs_diff, 6),
    )


def bench_throughput(
    state_dir: Path, model: BenchModel, args: argparse.Namespace, budget: Budget
) -> list[ThroughputStats]:
    """Raw ORT first; then `--rounds` rounds over every config, in process and over HTTP."""
    rows = bench_raw_throughput(model, args, budget)
    sequential = rows[0].samples_per_s
    configs: list[ServingConfig] = args.batch_configs
    runs: dict[tuple[str, ServingConfig], list[ThroughputStats]] = {}
    for round_index in range(args.rounds):
        for serving in configs if round_index % 2 == 0 else configs[::-1]:
            if not budget.allows():
                break
            concurrent = bench_in_process_concurrent(model, serving, sequential, args)
            runs.setdefault(("in process", serving), []).append(asyncio.run(concurrent))
            runs.setdefault(("http", serving), []).append(
                http_row(state_dir, model, serving, sequential, args)
            )
    for where in ("in process", "http"):
        for serving in configs:
            done = runs.get((where, serving), [])
            if done:
                median = sorted(done, key=lambda t: t.samples_per_s)[(len(done) - 1) // 2]
                rounds = [t.samples_per_s for t in done]
                diffs = [t.max_abs_diff for t in done if t.max_abs_diff is not None]
                rows.append(
                    msgspec.structs.replace(
                        median,
                        samples_per_s_rounds=rounds,
                        errors=sum(t.errors for t in done),  # every round's checks, not only the median's
                        wrong_top1=sum(t.wrong_top1 for t in done),
                        max_abs_diff=max(diffs) if diffs else None,
                    )
                )
    return rows


# --- 4. footprint -------------------------------------------------------------------------------------


def memory_of(pid: int, what: str) -> MemoryStats:
    fields: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        parts = value.split()
        if parts and parts[0].isdigit():
            fields[key] = int(parts[0])
    pss = None
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                pss = round(int(line.split()[1]) / 1024, 1)
    return MemoryStats(
        what=what,
        vm_rss_mib=round(fields["VmRSS"] / 1024, 1),
        vm_hwm_mib=round(fields["VmHWM"] / 1024, 1),
        rss_anon_mib=round(fields.get("RssAnon", 0) / 1024, 1),
        rss_file_mib=round(fields.get("RssFile", 0) / 1024, 1),
        pss_mib=pss,
        threads=fields.get("Threads", 0),
    )


REFERENCE_SCRIPT = """
import sys, time
what = sys.argv[1]
if what != "python":
    import numpy, onnxruntime
if what == "session":
    s = onnxruntime.InferenceSession(sys.argv[2], providers=["CPUExecutionProvider"])
    name = s.get_inputs()[0].name
    s.run(None, {name: numpy.zeros((1, 1, 8, 8), numpy.float32)})
print("ready", flush=True)
time.sleep(float(sys.argv[3]))
"""


def reference_memory(what: str, label: str, model_path: Path, idle_s: float) -> MemoryStats:
    process = subprocess.Popen(
        [sys.executable, "-c", REFERENCE_SCRIPT, what, str(model_path), str(idle_s + 30)],
        stdout=subprocess.PIPE,
        cwd=tempfile.gettempdir(),
    )
    try:
        assert process.stdout is not None
        process.stdout.readline()
        time.sleep(min(idle_s, 2.0))
        return memory_of(process.pid, label)
    finally:
        process.kill()
        process.wait(timeout=10)


def bench_memory(
    state_dir: Path, model: BenchModel, args: argparse.Namespace, venv_python: Path | None
) -> tuple[float, list[MemoryStats]]:
    """The agent (daemon defaults, only `digits` installed) in this environment and, when there is one,
    in the fresh `.[agent]` venv (what a device installs: no compiler or control-plane packages)."""
    rows = []
    start_s = 0.0
    environments = [("dev env", Path(sys.executable), REPO_ROOT)]
    if venv_python is not None:
        environments.append(("fresh .[agent] venv", venv_python, state_dir.parent))
    for environment, python, cwd in environments:
        with running_agent(state_dir, args, DAEMON_DEFAULTS, python=python, cwd=cwd) as agent:
            time.sleep(args.idle_s)
            what = f"agent, {environment}: idle {args.idle_s:g} s after ready"
            rows.append(memory_of(agent.pid, what))
            client = AgentClient(agent.url, timeout_s=args.op_timeout_s)
            for i in range(200):
                client.infer(model.name, model.inputs[i % len(model.inputs)])
            time.sleep(min(args.idle_s, 2.0))
            rows.append(memory_of(agent.pid, f"agent, {environment}: after 200 requests, idle"))
            start_s = start_s or agent.start_s
    for what, label in (
        ("python", "reference: python -c (no imports)"),
        ("import", "reference: python + numpy + onnxruntime imported"),
        ("session", "reference: ... + the digits session open, 1 run"),
    ):
        rows.append(reference_memory(what, label, model.model_path, args.idle_s))
    return start_s, rows


def bench_install_size(work: Path, args: argparse.Namespace) -> tuple[InstallSize, Path | None]:
    """A fresh venv with `pip install <copy of this source>[agent]`; sizes from du and each RECORD."""
    source = work / "install-src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO_ROOT / name, source / name)
    for name in PACKAGE_DIRS:
        shutil.copytree(REPO_ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
    venv = work / "venv"
    started = time.monotonic()
    try:
        subprocess.run(
            [sys.executable, "-m", "venv", str(venv)], check=True, capture_output=True, timeout=120
        )
        python = venv / "bin" / "python"
        subprocess.run(
            [str(python), "-m", "pip", "install", "--quiet", f"{source}[agent]"],
            check=True,
            capture_output=True,
            text=True,
            timeout=args.install_timeout_s,
        )
        listing = subprocess.run(
            [str(python), "-c", SIZE_SCRIPT], check=True, capture_output=True, text=True, timeout=120
        )
    except subprocess.CalledProcessError as e:
        return InstallSize(error=f"{' '.join(map(str, e.cmd[:4]))} failed: {(e.stderr or '')[-500:]}"), None
    except subprocess.TimeoutExpired as e:
        return InstallSize(error=f"timed out after {e.timeout:g} s"), None
    install_s = time.monotonic() - started
    site, sizes = json.loads(listing.stdout)
    total = int(
        subprocess.run(["du", "-sb", site], check=True, capture_output=True, text=True).stdout.split()[0]
    )
    packages = sorted((PackageSize(name=n, version=v, bytes=b) for n, v, b in sizes), key=lambda p: -p.bytes)
    tooling = sum(p.bytes for p in packages if p.name.lower() in ("pip", "setuptools"))
    size = InstallSize(
        site_packages_bytes=total,
        without_pip_setuptools_bytes=total - tooling,
        distributions=len(packages),
        largest=packages[:10],
        install_s=round(install_s, 1),
    )
    return size, python


SIZE_SCRIPT = """
import importlib.metadata, json, os, sysconfig
site = sysconfig.get_paths()["purelib"]
sizes = []
for dist in importlib.metadata.distributions(path=[site]):
    total = 0
    for f in dist.files or ():
        path = os.path.realpath(dist.locate_file(f))
        if path.startswith(os.path.realpath(site)) and os.path.isfile(path):
            total += os.path.getsize(path)
    sizes.append((dist.metadata["Name"], dist.version, total))
print(json.dumps([site, sizes]))
"""


# --- run and report -------------------------------------------------------------------------------------


def other_cpu_seconds() -> tuple[float, float] | None:
    """(wall clock, busy CPU seconds of the machine minus ours and our waited-for children)."""
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:8]]
    except (OSError, ValueError, IndexError):
        return None
    user, nice, system, _idle, _iowait, irq, softirq = fields
    busy_s = (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")
    ours = os.times()
    return time.monotonic(), busy_s - (ours.user + ours.system + ours.children_user + ours.children_system)


def others_cores(start: tuple[float, float] | None, end: tuple[float, float] | None) -> float | None:
    if start is None or end is None or end[0] <= start[0]:
        return None
    return round(max(0.0, end[1] - start[1]) / (end[0] - start[0]), 3)


def run(args: argparse.Namespace) -> Report:
    budget = Budget(args.budget_s)
    load_start = os.getloadavg()
    cpu_start = other_cpu_seconds()
    with tempfile.TemporaryDirectory(prefix="edgefabric-agent-bench-") as tmp:
        work = Path(tmp)
        print("building, signing and installing the models ...", file=sys.stderr)
        releases = build_and_sign(work)
        serving_dir, small_dir = work / "state-serving", work / "state-small"
        store = install(releases, serving_dir, ("digits", "wide"))
        install(releases, small_dir, ("digits",))
        models = bench_models(work, store)

        print("in-process latency ...", file=sys.stderr)
        in_process = {name: asyncio.run(bench_in_process(m, args, budget)) for name, m in models.items()}
        print("HTTP latency ...", file=sys.stderr)
        http_rows: dict[str, list[LatencyStats]] = {}
        with running_agent(serving_dir, args, BATCHING_OFF) as agent:
            for name, model in models.items():
                baseline = next(r for r in in_process[name] if "TelemetryRecorder" in r.what)
                http_rows[name] = bench_http(agent, model, baseline.p50_ms, args, budget)
        latency = [
            ModelLatency(model=n, description=m.description, in_process=in_process[n], http=http_rows[n])
            for n, m in models.items()
        ]

        print("throughput ...", file=sys.stderr)
        throughput = bench_throughput(serving_dir, models["wide"], args, budget)
        install_size, venv_python = None, None
        if args.install_size:
            print("install size (fresh venv, pip install .[agent]) ...", file=sys.stderr)
            install_size, venv_python = bench_install_size(work, args)
        print("memory ...", file=sys.stderr)
        start_s, memory = bench_memory(small_dir, models["digits"], args, venv_python)
    return Report(
        benchmark="agent",
        date=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        command=" ".join(["python", *sys.argv]),
        machine=machine_info(),
        latency=latency,
        throughput_model=models["wide"].description,
        throughput=throughput,
        agent_start_s=round(start_s, 2),
        memory=memory,
        install_size=install_size,
        load_average_start=load_start,
        other_processes_cores=others_cores(cpu_start, other_cpu_seconds()),
        budget_exhausted=budget.exhausted,
    )


def print_report(report: Report) -> None:
    m = report.machine
    print(f"\nEdge agent benchmark, {report.date}")
    print(
        f"machine: {m.usable_cpus} usable CPUs ({m.cpu_model}, VNNI {'yes' if m.has_vnni else 'no'}), "
        f"{m.platform}, Python {m.python}, onnxruntime {m.onnxruntime}, numpy {m.numpy}, "
        f"uvicorn {m.uvicorn} ({m.http_parser})"
    )
    header = f"{'variant':<68} {'n':>5} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'x raw':>6} {'+ms':>7}"
    for model in report.latency:
        print(f"\nLatency, batch 1: {model.model} = {model.description}")
        print(header)
        for r in [*model.in_process, *model.http]:
            ratio = f"{r.p50_vs_raw:.2f}" if r.p50_vs_raw is not None else ""
            added = f"{r.added_p50_ms:+.3f}" if r.added_p50_ms is not None else ""
            print(
                f"{r.what:<68} {r.n:>5} {r.p50_ms:>8.3f} {r.p95_ms:>8.3f} {r.p99_ms:>8.3f} "
                f"{ratio:>6} {added:>7}"
            )
    print(f"\nThroughput: {report.throughput_model}")
    print(
        f"{'variant':<50} {'clients':>7} {'samples/s':>10} {'x seq':>6} {'p50 ms':>8} {'p99 ms':>8} "
        f"{'rounds':>11} {'batch':>6} {'srv cores':>9} {'loop':>5} {'client':>6} {'err':>4} {'wrong':>5}"
    )
    for t in report.throughput:
        p50 = f"{t.p50_ms:.2f}" if t.p50_ms is not None else ""
        p99 = f"{t.p99_ms:.2f}" if t.p99_ms is not None else ""
        batch = f"{t.mean_batch_size:.1f}" if t.mean_batch_size is not None else ""
        print(
            f"{t.variant:<50} {t.clients:>7} {t.samples_per_s:>10.1f} {t.vs_sequential:>6.2f} "
            f"{p50:>8} {p99:>8} {spread(t.samples_per_s_rounds):>11} {batch:>6} {opt(t.server_cores):>9} "
            f"{opt(t.server_loop_cores):>5} {opt(t.client_cores):>6} {t.errors:>4} {t.wrong_top1:>5}"
        )
    print(f"\nFootprint (agent start to ready: {report.agent_start_s} s)")
    print(f"{'process':<56} {'VmRSS':>7} {'VmHWM':>7} {'anon':>7} {'file':>7} {'Pss':>7} {'thr':>4}  (MiB)")
    for mem in report.memory:
        pss = f"{mem.pss_mib:.1f}" if mem.pss_mib is not None else ""
        print(
            f"{mem.what:<56} {mem.vm_rss_mib:>7.1f} {mem.vm_hwm_mib:>7.1f} {mem.rss_anon_mib:>7.1f} "
            f"{mem.rss_file_mib:>7.1f} {pss:>7} {mem.threads:>4}"
        )
    size = report.install_size
    if size is not None and size.error:
        print(f"\ninstall size: not measured ({size.error})")
    elif size is not None:
        print(
            f"\nFresh `pip install .[agent]` venv: site-packages {size.site_packages_bytes / 1e6:.1f} MB "
            f"({size.without_pip_setuptools_bytes / 1e6:.1f} MB without pip/setuptools), "
            f"{size.distributions} distributions, installed in {size.install_s:g} s"
        )
        for p in size.largest:
            print(f"  {p.name:<28} {p.version:<14} {p.bytes / 1e6:>8.1f} MB")
    others = report.other_processes_cores
    print(
        f"\nload average before the run: {report.load_average_start}; CPU used by other processes "
        f"during the run: {'unknown' if others is None else f'{others:.2f} cores'}"
    )
    if others is None or others > 0.1:
        print("WARNING: other work was running on this machine; timings are not clean")
    if report.budget_exhausted:
        print("\nWARNING: --budget-s ran out; some blocks have fewer runs than asked")


def spread(values: list[float]) -> str:
    return f"{min(values):.0f}-{max(values):.0f}" if len(values) > 1 else ""


def opt(value: float | None, spec: str = ".2f") -> str:
    return "" if value is None else format(value, spec)


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def batch_configs(text: str) -> list[ServingConfig]:
    """`8:2,32:2:1` -> batch 8 with 2 ms delay; batch 32, 2 ms, 1 ORT thread. `1:0` is batching off."""
    configs = []
    for item in text.split(","):
        parts = item.split(":")
        try:
            batch, delay = int(parts[0]), float(parts[1]) if len(parts) > 1 else 0.0
            threads = int(parts[2]) if len(parts) > 2 else None
        except ValueError as e:
            raise argparse.ArgumentTypeError(f"not BATCH:DELAY_MS[:THREADS]: {item!r}") from e
        if batch < 1 or delay < 0 or (threads is not None and threads < 1) or len(parts) > 3:
            raise argparse.ArgumentTypeError(f"need batch >= 1, delay >= 0, threads >= 1: {item!r}")
        configs.append(ServingConfig(batch=batch, delay_ms=delay, threads=threads))
    return configs


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Edge agent: in-process and OIP HTTP latency, batched throughput, RSS and install size "
        "(loopback only).",
    )
    parser.add_argument("--n", type=positive_int, default=2000, help="timed calls per latency variant")
    parser.add_argument("--warmup", type=int, default=200, help="untimed calls before each variant")
    parser.add_argument("--clients", type=positive_int, default=32, help="concurrent clients for throughput")
    parser.add_argument(
        "--load-requests",
        type=positive_int,
        default=150,
        help="timed requests per client in a throughput run",
    )
    parser.add_argument(
        "--batch-configs",
        type=batch_configs,
        default=batch_configs("1:0,8:2,16:2,32:0,32:1,32:2,32:5,32:2:1"),
        help="BATCH:DELAY_MS[:THREADS] list for the throughput runs: max_batch_size, max_queue_delay_ms "
        "and inference_threads (default: ORT's own); 1:0 = batching off",
    )
    parser.add_argument(
        "--rounds", type=positive_int, default=3, help="rounds of the concurrent throughput runs"
    )
    parser.add_argument("--idle-s", type=float, default=5.0, help="idle time before reading the agent's RSS")
    parser.add_argument(
        "--install-size",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="measure a fresh venv with .[agent] installed (downloads packages; a minute or two)",
    )
    parser.add_argument("--install-timeout-s", type=float, default=600.0, help="limit for the pip install")
    parser.add_argument("--op-timeout-s", type=float, default=30.0, help="limit for any single request")
    parser.add_argument("--start-timeout-s", type=float, default=60.0, help="limit for an agent to get ready")
    parser.add_argument("--budget-s", type=float, default=900.0, help="limit for the timed blocks")
    parser.add_argument("--json-out", type=Path, default=DEFAULT_JSON, help="where to write the JSON report")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        report = run(args)
    except (SetupError, FabricError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_SETUP_FAILED
    except (CheckFailedError, urllib.error.URLError, OSError, TimeoutError) as e:
        print(f"error: {e!r}", file=sys.stderr)
        return EXIT_CHECK_FAILED
    print_report(report)
    args.json_out.parent.mkdir(parents=True, exist_ok=True)
    args.json_out.write_bytes(msgspec.json.format(msgspec.json.encode(report), indent=2) + b"\n")
    print(f"\nJSON report: {args.json_out}")
    failed = any(t.errors or t.wrong_top1 for t in report.throughput)
    return EXIT_CHECK_FAILED if failed else EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
