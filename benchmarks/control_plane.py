"""Control-plane benchmark: telemetry ingest rate into SQLite; the device list under load.

One function per measurement, selected with `--measure` (default: all of `MEASUREMENTS`); each
returns its own Struct and adds a section to the table and the JSON report. Add a measurement by
writing `async def bench_<name>(args, budget) -> <Struct>` and registering it in `MEASUREMENTS`.

`ingest`, per run (`--runs`, after `--warmup` untimed ones), in a new temporary directory with a new
`EmbeddedBroker` (a real nats-server with JetStream, loopback only) and a new data dir:
1. publish `--records` records as `TelemetryBatch` messages of `--batch-records` records (the shape
   the agent sends: 12 latency bounds, 10 output classes, 4 input features, uuid4 record ids, from
   `--devices` devices) with `publish_durable`, untimed;
2. start a `TelemetryIngest` over the data dir and time from `start()` until every record is
   committed, then check the database holds exactly `--records` distinct records and the consumer
   has nothing pending or unacked.
Reported: median records/s over the runs, each run's time, the CPU time of this process (the
ingest) and of nats-server during it, hence records per CPU-second (what one free core sustains:
other work on a shared machine moves it much less than the wall-clock rate), and the 1-minute load
average as each run started. Then, once, each stage alone on the same payloads, to say where the
time goes: decode + admission (`admit`, no I/O), SQLite inserts of the decoded batches (one
transaction per `--fetch-max-messages` messages, a fresh database), and fetch + ack of every
message from a second durable consumer without storing anything.

Target (issue "control plane"): >= 20,000 records/s into SQLite on the 2-core machine.

`devices`: `GET /api/v1/devices?limit=100` with `--fleet-devices` (10,000) devices enrolled through
the real enrollment service, served by a real `edgefabric up` subprocess, under `--clients`
keep-alive connections sending `--requests` requests back to back (see `benchmarks/_devices_list.py`):
p50/p99 latency and requests/s, plus the latency of a single client alone.

Every loop is bounded by a count, every wait by `--op-timeout-s`, and the whole run by `--budget-s`.
Exit codes: 0 done and every check passed; 1 a count check failed; 2 bad usage (argparse); 3 the
broker or the bus failed, or an operation hit `--op-timeout-s`.

Usage: `python benchmarks/control_plane.py [--measure ingest] [--records 200000] [--batch-records 50]
[--runs 5] [--json-out benchmarks/results/control_plane.json]` (see `--help`).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import importlib.metadata
import os
import platform
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

import msgspec

# `python benchmarks/control_plane.py` puts this file's directory first on sys.path, where this
# module would shadow the `control_plane` package it measures.
if sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
    sys.path[0] = str(Path(__file__).resolve().parent.parent)  # the repository: `benchmarks._*` helpers

from benchmarks._devices_list import DevicesListStats
from benchmarks._devices_list import measure as measure_devices_list
from control_plane.broker import EmbeddedBroker, find_nats_server
from control_plane.config import ControlPlaneConfig
from control_plane.server import open_data_dir
from control_plane.telemetry.consumer import DurableConsumer
from control_plane.telemetry.ingest import STORAGE_CACHE_KIB, Admitted, TelemetryIngest, admit
from control_plane.telemetry.repositories import TelemetryRepository
from protocols import codec, subjects
from protocols.errors import FabricError
from protocols.messages import TelemetryBatch, TelemetryRecord
from protocols.transports.nats_bus import NatsBus

EXIT_OK, EXIT_CHECK_FAILED, EXIT_BUS_FAILED = 0, 1, 3
DEFAULT_JSON = Path(__file__).resolve().parent / "results" / "control_plane.json"
LATENCY_MS_BOUNDS = (1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0, 5000.0)
PUBLISH_CONCURRENCY = 64
TARGET_RECORDS_PER_S = 20_000


class Machine(msgspec.Struct, frozen=True, kw_only=True):
    cpu_count: int | None
    usable_cpus: int
    cpu_model: str
    platform: str
    python: str
    sqlite: str
    nats_server: str
    nats_py: str


class StageStats(msgspec.Struct, frozen=True, kw_only=True):
    stage: str
    seconds: float
    records_per_s: float


class IngestStats(msgspec.Struct, frozen=True, kw_only=True):
    records: int
    batch_records: int
    messages: int
    devices: int
    payload_bytes: int
    fetch_max_messages: int
    runs: int
    times_s: list[float]
    cpu_s: list[float]
    """CPU time of this process (the ingest) during each timed run."""
    broker_cpu_s: list[float]
    """CPU time of nats-server during each timed run."""
    records_per_cpu_s: int
    """Records per CPU-second of ingest + broker (median run): what one free core sustains."""
    load_avg_1m: list[float]
    """The machine's 1-minute load average as each timed run started (the 2 cores are shared)."""
    median_s: float
    median_records_per_s: float
    best_records_per_s: float
    target_records_per_s: int
    stages: list[StageStats]
    counts_ok: bool


class Report(msgspec.Struct, frozen=True, kw_only=True):
    benchmark: str
    date: str
    command: str
    machine: Machine
    ingest: IngestStats | None = None
    devices: DevicesListStats | None = None
    budget_exhausted: bool = False


class Budget:
    """A wall-clock budget for the whole run; measurements stop starting new runs once it is spent."""

    def __init__(self, seconds: float) -> None:
        self.deadline = time.monotonic() + seconds
        self.exhausted = False

    def allows(self) -> bool:
        if time.monotonic() >= self.deadline:
            self.exhausted = True
        return not self.exhausted


def machine_info() -> Machine:
    cpu_model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        out = subprocess.run(
            [str(find_nats_server()), "--version"], capture_output=True, text=True, timeout=10, check=False
        )
        nats_server = out.stdout.strip() or out.stderr.strip() or "unknown"
    except (FabricError, OSError, subprocess.TimeoutExpired):
        nats_server = "unknown"
    return Machine(
        cpu_count=os.cpu_count(),
        usable_cpus=len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 0,
        cpu_model=cpu_model,
        platform=platform.platform(),
        python=platform.python_version(),
        sqlite=sqlite3.sqlite_version,
        nats_server=nats_server,
        nats_py=importlib.metadata.version("nats-py"),
    )


# --- ingest ----------------------------------------------------------------------------------------


def telemetry_batches(records: int, batch_records: int, devices: int) -> list[TelemetryBatch]:
    """`records` agent-shaped records in batches of `batch_records`, round-robin over `devices`."""
    start = datetime.datetime(2030, 1, 1, tzinfo=datetime.UTC)
    batches = []
    for n in range(-(-records // batch_records)):
        size = min(batch_records, records - n * batch_records)
        batch_records_ = tuple(
            TelemetryRecord(
                record_id=uuid.uuid4().hex,
                model="digits",
                version="3",
                minute_start=start + datetime.timedelta(minutes=n // devices),
                count=120 + i,
                error_count=i % 3,
                latency_ms_bounds=LATENCY_MS_BOUNDS,
                latency_ms_buckets=(0, 10, 60, 100, 110, 115, 118, 119, 120, 120, 120, 120, 120 + i),
                latency_ms_sum=1234.5 + i,
                output_histogram=(12, 13, 11, 12, 14, 10, 12, 12, 13, 11 + i),
                input_mean=(0.1, 0.2, 0.3, 0.4),
                input_std=(1.0, 1.1, 1.2, 1.3),
            )
            for i in range(size)
        )
        batches.append(
            TelemetryBatch(
                device_id=f"dev-{n % devices:05}", batch_id=uuid.uuid4().hex, records=batch_records_
            )
        )
    return batches


async def publish_batches(
    bus: NatsBus, payloads: list[tuple[TelemetryBatch, bytes]], timeout_s: float
) -> None:
    for first in range(0, len(payloads), PUBLISH_CONCURRENCY):
        await asyncio.gather(
            *(
                bus.publish_durable(
                    subjects.telemetry(batch.device_id), payload, msg_id=batch.batch_id, timeout_s=timeout_s
                )
                for batch, payload in payloads[first : first + PUBLISH_CONCURRENCY]
            )
        )


async def wait_until(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        await asyncio.sleep(0.005)


class Drain(msgspec.Struct, frozen=True, kw_only=True):
    """One timed drain: wall time, CPU time of this process and of nats-server, counts checked."""

    seconds: float
    cpu_s: float
    broker_cpu_s: float
    counts_ok: bool


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of another process so far (Linux `/proc`)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def ingest_run(
    args: argparse.Namespace, payloads: list[tuple[TelemetryBatch, bytes]], work: Path
) -> Drain:
    """One timed drain of a freshly published stream."""
    config = ControlPlaneConfig(data_dir=str(work / "data"))
    db = open_data_dir(config)
    try:
        with EmbeddedBroker(work / "broker") as broker:
            async with NatsBus(broker.nats_url, name="bench-devices") as devices:
                await devices.connect()
                await devices.provision()
                await publish_batches(devices, payloads, args.op_timeout_s)
                ingest = TelemetryIngest(
                    devices, config.database_path, fetch_max_messages=args.fetch_max_messages
                )
                assert broker.pid is not None
                broker_cpu, cpu, started = process_cpu_s(broker.pid), time.process_time(), time.perf_counter()
                await ingest.start()
                try:
                    await wait_until(
                        lambda: ingest.metrics.records_ingested >= args.records,
                        args.op_timeout_s,
                        "the ingest did not store every record",
                    )
                    elapsed = time.perf_counter() - started
                    cpu, broker_cpu = time.process_time() - cpu, process_cpu_s(broker.pid) - broker_cpu
                finally:
                    await ingest.stop()
                info = await devices.js.consumer_info(subjects.TELEMETRY_STREAM, "control-plane-ingest")
                settled = info.num_pending == 0 and info.num_ack_pending == 0
        stored = TelemetryRepository(db).record_count()
        distinct = db.execute("SELECT COUNT(DISTINCT record_id) FROM telemetry_records").fetchone()[0]
    finally:
        db.close()
    return Drain(
        seconds=elapsed,
        cpu_s=cpu,
        broker_cpu_s=broker_cpu,
        counts_ok=settled and stored == distinct == args.records,
    )


async def ingest_stages(
    args: argparse.Namespace, payloads: list[tuple[TelemetryBatch, bytes]], work: Path
) -> list[StageStats]:
    """Each stage of a drain alone, on the same payloads."""
    addressed = [(subjects.telemetry(batch.device_id).nats, payload) for batch, payload in payloads]
    started = time.perf_counter()
    admitted = [admit(subject, payload) for subject, payload in addressed]
    decode_s = time.perf_counter() - started
    batches = [verdict.batch for verdict in admitted if isinstance(verdict, Admitted)]

    config = ControlPlaneConfig(data_dir=str(work / "stages-data"))
    db = open_data_dir(config)
    try:
        db.execute(f"PRAGMA cache_size = -{STORAGE_CACHE_KIB}")  # as the ingest's own connection
        repository = TelemetryRepository(db)
        started = time.perf_counter()
        for first in range(0, len(batches), args.fetch_max_messages):
            repository.insert(
                batches[first : first + args.fetch_max_messages],
                received_at=datetime.datetime.now(datetime.UTC),
            )
        insert_s = time.perf_counter() - started
    finally:
        db.close()

    with EmbeddedBroker(work / "stages-broker") as broker:
        async with NatsBus(broker.nats_url, name="bench-stages") as bus:
            await bus.connect()
            await bus.provision()
            await publish_batches(bus, payloads, args.op_timeout_s)
            consumer = DurableConsumer(
                bus,
                stream=subjects.TELEMETRY_STREAM,
                durable="bench-fetch-ack",
                filter_subject=subjects.telemetry().nats,
                ack_wait_s=30.0,
                max_ack_pending=4 * args.fetch_max_messages,
            )
            await consumer.open()
            started = time.perf_counter()
            received = 0
            deadline = time.monotonic() + args.op_timeout_s
            while received < len(payloads) and time.monotonic() < deadline:
                messages = await consumer.fetch(args.fetch_max_messages, 1.0)
                for message in messages:
                    await consumer.ack(message)
                received += len(messages)
            fetch_s = time.perf_counter() - started
            await consumer.close()
    if received < len(payloads):
        raise TimeoutError("fetch + ack did not receive every message")
    return [
        StageStats(stage=name, seconds=round(seconds, 3), records_per_s=round(args.records / seconds))
        for name, seconds in (
            ("decode + admit (no I/O)", decode_s),
            (f"SQLite insert ({args.fetch_max_messages} messages per transaction)", insert_s),
            ("fetch + ack, nothing stored", fetch_s),
        )
    ]


async def bench_ingest(args: argparse.Namespace, budget: Budget) -> IngestStats:
    batches = telemetry_batches(args.records, args.batch_records, args.devices)
    payloads = [(batch, codec.encode(batch)) for batch in batches]
    drains: list[Drain] = []
    loads: list[float] = []
    counts_ok = True
    with tempfile.TemporaryDirectory(prefix="edgefabric-bench-cp-") as tmp:
        for run in range(args.warmup + args.runs):
            if not budget.allows():
                break
            load = os.getloadavg()[0]
            drain = await ingest_run(args, payloads, Path(tmp) / f"run-{run}")
            counts_ok = counts_ok and drain.counts_ok
            label = "warm-up" if run < args.warmup else "run"
            print(
                f"ingest {label} {run + 1}: {drain.seconds:.3f} s, {args.records / drain.seconds:,.0f} "
                f"records/s, CPU {drain.cpu_s:.2f} s + broker {drain.broker_cpu_s:.2f} s (load {load:.2f})",
                file=sys.stderr,
            )
            if run >= args.warmup:
                drains.append(drain)
                loads.append(round(load, 2))
        stages = await ingest_stages(args, payloads, Path(tmp)) if budget.allows() else []
    times = [d.seconds for d in drains]
    median = statistics.median(times) if times else float("nan")
    cpu_per_run = [d.cpu_s + d.broker_cpu_s for d in drains]
    return IngestStats(
        records=args.records,
        batch_records=args.batch_records,
        messages=len(payloads),
        devices=args.devices,
        payload_bytes=sum(len(p) for _, p in payloads),
        fetch_max_messages=args.fetch_max_messages,
        runs=len(times),
        times_s=[round(t, 3) for t in times],
        cpu_s=[round(d.cpu_s, 2) for d in drains],
        broker_cpu_s=[round(d.broker_cpu_s, 2) for d in drains],
        records_per_cpu_s=round(args.records / statistics.median(cpu_per_run)) if drains else 0,
        load_avg_1m=loads,
        median_s=round(median, 3),
        median_records_per_s=round(args.records / median) if times else 0,
        best_records_per_s=round(args.records / min(times)) if times else 0,
        target_records_per_s=TARGET_RECORDS_PER_S,
        stages=stages,
        counts_ok=counts_ok,
    )


async def bench_devices(args: argparse.Namespace, budget: Budget) -> DevicesListStats:
    with tempfile.TemporaryDirectory(prefix="edgefabric-bench-devices-") as tmp:
        return await measure_devices_list(
            Path(tmp), devices=args.fleet_devices, clients=args.clients, requests=args.requests
        )


Measurement = Callable[[argparse.Namespace, Budget], Awaitable[msgspec.Struct]]
MEASUREMENTS: dict[str, Measurement] = {"ingest": bench_ingest, "devices": bench_devices}
"""Name -> measurement; the name is also the Report field its result goes into."""


async def run(args: argparse.Namespace) -> Report:
    budget = Budget(args.budget_s)
    results = {name: await MEASUREMENTS[name](args, budget) for name in args.measure}
    return Report(
        benchmark="control_plane",
        date=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        command=" ".join(["python", *sys.argv]),
        machine=machine_info(),
        budget_exhausted=budget.exhausted,
        **results,  # type: ignore[arg-type]
    )


def print_report(report: Report) -> None:
    m = report.machine
    print(f"\nControl-plane benchmark, {report.date}")
    print(
        f"machine: {m.usable_cpus} usable CPUs ({m.cpu_model}), {m.platform}, Python {m.python}, "
        f"SQLite {m.sqlite}, {m.nats_server}, nats-py {m.nats_py}"
    )
    if report.ingest is not None:
        i = report.ingest
        print(
            f"\nTelemetry ingest: {i.records:,} records in {i.messages:,} batches of {i.batch_records} "
            f"({i.payload_bytes / 1e6:.1f} MB) from {i.devices} devices, {i.fetch_max_messages} messages "
            "per fetch and transaction"
        )
        print(
            f"{'runs':>4} {'median s':>9} {'median rec/s':>13} {'best rec/s':>11} {'target':>8} {'counts':>7}"
        )
        print(
            f"{i.runs:>4} {i.median_s:>9.3f} {i.median_records_per_s:>13,} {i.best_records_per_s:>11,} "
            f"{i.target_records_per_s:>8,} {'ok' if i.counts_ok else 'FAIL':>7}"
        )
        print(f"runs (s): {', '.join(f'{t:.3f}' for t in i.times_s)}")
        print(f"1-min load average as each run started: {', '.join(f'{x:.2f}' for x in i.load_avg_1m)}")
        print(
            f"CPU s (ingest process + nats-server): "
            f"{', '.join(f'{c:.2f} + {b:.2f}' for c, b in zip(i.cpu_s, i.broker_cpu_s, strict=True))}; "
            f"median {i.records_per_cpu_s:,} records per CPU-second"
        )
        if i.stages:
            print(f"\n{'stage alone':<52} {'s':>7} {'records/s':>11}")
            for s in i.stages:
                print(f"{s.stage:<52} {s.seconds:>7.3f} {s.records_per_s:>11,}")
    if report.devices is not None:
        d = report.devices
        print(
            f"\nGET /api/v1/devices?limit=100 with {d.devices:,} devices (enrolled in {d.enroll_s:.1f} s), "
            f"{d.clients} clients, {d.requests:,} requests in {d.duration_s:.1f} s"
        )
        print(
            f"{'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} "
            f"{'1 client p50':>13} {'p99':>7} {'errors':>7}"
        )
        print(
            f"{d.requests_per_s:>8.1f} {d.p50_ms:>8.2f} {d.p99_ms:>8.2f} {d.max_ms:>8.2f} "
            f"{d.single_client_p50_ms:>13.2f} {d.single_client_p99_ms:>7.2f} {d.errors:>7}"
        )
    if report.budget_exhausted:
        print("\nWARNING: --budget-s ran out; some measurements have fewer runs than asked")


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Control-plane benchmarks on an embedded nats-server.")
    parser.add_argument(
        "--measure",
        nargs="+",
        choices=sorted(MEASUREMENTS),
        default=sorted(MEASUREMENTS),
        help="measurements to run (default: all)",
    )
    parser.add_argument("--records", type=positive_int, default=200_000, help="telemetry records per run")
    parser.add_argument("--batch-records", type=positive_int, default=50, help="records per batch message")
    parser.add_argument("--devices", type=positive_int, default=200, help="devices the batches come from")
    parser.add_argument(
        "--fetch-max-messages", type=positive_int, default=200, help="messages per fetch and transaction"
    )
    parser.add_argument("--runs", type=positive_int, default=5, help="timed ingest runs")
    parser.add_argument("--warmup", type=int, default=1, help="untimed ingest runs first")
    parser.add_argument("--fleet-devices", type=positive_int, default=10_000, help="devices for `devices`")
    parser.add_argument(
        "--clients", type=positive_int, default=8, help="concurrent connections for `devices`"
    )
    parser.add_argument("--requests", type=positive_int, default=4000, help="requests for `devices`")
    parser.add_argument("--op-timeout-s", type=float, default=300.0, help="limit for any single wait")
    parser.add_argument("--budget-s", type=float, default=1200.0, help="limit for the whole run")
    parser.add_argument("--json-out", type=Path, default=DEFAULT_JSON, help="where to write the JSON report")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        report = asyncio.run(run(args))
    except FabricError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BUS_FAILED
    except TimeoutError as e:
        print(f"error: {e or 'an operation'} within --op-timeout-s {args.op_timeout_s:g}", file=sys.stderr)
        return EXIT_BUS_FAILED
    print_report(report)
    args.json_out.parent.mkdir(parents=True, exist_ok=True)
    args.json_out.write_bytes(msgspec.json.format(msgspec.json.encode(report), indent=2) + b"\n")
    print(f"\nJSON report: {args.json_out}")
    return EXIT_OK if report.ingest is None or report.ingest.counts_ok else EXIT_CHECK_FAILED


if __name__ == "__main__":
    sys.exit(main())
