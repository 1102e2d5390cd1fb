"""Transport benchmark: artifact fetch throughput, fetch resume, and KV twin latency over NATS.

Everything runs against `control_plane.broker.EmbeddedBroker` (a real nats-server with
JetStream, loopback only) in one temporary directory that is removed afterwards.

What it measures:

1. Fetch throughput of one `--size-mb` object of `os.urandom` bytes (decimal MB), three ways,
   each in its own block of runs (never interleaved), median time per variant:
   - ours: `NatsObjects.fetch_to_file` (ordered consumer, streams to `<dest>.part`, hashes as it
     goes, fsyncs, renames), `--runs` runs after `--warmup` untimed ones;
   - nats-py `ObjectStore.get(name)` (concatenates `bytes` per chunk: quadratic), `--lib-runs` runs;
   - nats-py `ObjectStore.get(name, writeinto=f)` (a thread-pool write per chunk), `--runs` runs.
   Every result's SHA-256 is checked against the published digest; for the two library variants
   that check is done outside the timed region (the library already checks the digest inside it).
2. Resume: a fetch interrupted once more than half the bytes are written (an `on_progress`
   callback raises), then the same fetch again, `--resume-runs` times; reports the bytes it
   resumed from and the median time of the second part (which includes re-hashing the prefix
   already on disk and the fsync of the whole file).
3. KV twin latency, `--kv-n` sequential samples each: `put_state` alone (PubAck round trip), and
   put -> delivery on a `watch_state` watcher that sits on a second connection.

Targets (issue "foundation"): our fetcher >= 100 MB/s on loopback with 2 cores, and >= 10x the
library `get()`. The messaging research note (shared research notes, `messaging.md` sections
2.2-2.3) saw 167-183 MB/s for a custom fetch, 5-6.5 MB/s for `get()`, ~40 MB/s for
`get(writeinto=)` and a put -> watch p50 of ~0.6 ms on a comparable VM.

Every loop is bounded by a count, every network operation by `--op-timeout-s`, and the whole
run by `--budget-s` (a block that runs out of budget stops early and says so in the report).

Exit codes: 0 done and every digest matched; 1 a digest or resume check failed; 2 bad usage
(argparse); 3 the broker or the bus failed, or an operation hit `--op-timeout-s`.

Usage: `python benchmarks/transport.py [--runs 7] [--lib-runs 3] [--size-mb 50] [--resume-runs 3]
[--kv-n 500] [--json-out benchmarks/results/transport.json]` (see `--help`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import hashlib
import importlib.metadata
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import msgspec

from control_plane.broker import EmbeddedBroker, find_nats_server
from protocols.errors import FabricError
from protocols.subjects import ARTIFACT_BUCKET, StateKey
from protocols.transports.nats_bus import NatsBus

MB = 1_000_000
EXIT_OK, EXIT_CHECK_FAILED, EXIT_BUS_FAILED = 0, 1, 3
DEVICE_ID = "bench-device"
DEFAULT_JSON = Path(__file__).resolve().parent / "results" / "transport.json"


class Machine(msgspec.Struct, frozen=True, kw_only=True):
    cpu_count: int | None
    usable_cpus: int
    cpu_model: str
    platform: str
    python: str
    nats_server: str
    nats_py: str


class FetchStats(msgspec.Struct, frozen=True, kw_only=True):
    variant: str
    runs: int
    times_s: list[float]
    median_s: float
    median_mb_per_s: float
    best_mb_per_s: float
    digest_ok: bool


class ResumeStats(msgspec.Struct, frozen=True, kw_only=True):
    """Medians over `runs` interrupt-then-resume cycles; `second_part_s` lists every cycle."""

    runs: int
    interrupted_after_bytes: int
    first_part_s: float
    resumed_from_bytes: int
    second_part_bytes: int
    second_part_times_s: list[float]
    second_part_s: float
    second_part_mb_per_s: float
    digest_ok: bool


class LatencyStats(msgspec.Struct, frozen=True, kw_only=True):
    what: str
    n: int
    p50_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float
    mean_ms: float


class Report(msgspec.Struct, frozen=True, kw_only=True):
    benchmark: str
    date: str
    command: str
    machine: Machine
    size_bytes: int
    fetch: list[FetchStats]
    speedup_vs_get: float | None
    speedup_vs_writeinto: float | None
    resume: ResumeStats | None
    kv: list[LatencyStats]
    budget_exhausted: bool


class Interrupted(Exception):
    """Raised from the progress callback to cut a fetch in half."""


class Budget:
    """A wall-clock budget for the whole run; blocks stop starting new runs once it is spent."""

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
        nats_server=nats_server,
        nats_py=importlib.metadata.version("nats-py"),
    )


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def fetch_stats(variant: str, size_bytes: int, times_s: list[float], digest_ok: bool) -> FetchStats:
    median = statistics.median(times_s) if times_s else float("nan")
    return FetchStats(
        variant=variant,
        runs=len(times_s),
        times_s=[round(t, 4) for t in times_s],
        median_s=round(median, 4),
        median_mb_per_s=round(size_bytes / MB / median, 1),
        best_mb_per_s=round(size_bytes / MB / min(times_s), 1) if times_s else float("nan"),
        digest_ok=digest_ok,
    )


def latency_stats(what: str, samples_s: list[float]) -> LatencyStats:
    ms = sorted(s * 1000 for s in samples_s)
    q = statistics.quantiles(ms, n=100, method="inclusive")
    return LatencyStats(
        what=what,
        n=len(ms),
        p50_ms=round(q[49], 3),
        p95_ms=round(q[94], 3),
        p99_ms=round(q[98], 3),
        max_ms=round(ms[-1], 3),
        mean_ms=round(statistics.fmean(ms), 3),
    )


async def timed_runs(
    runs: int, budget: Budget, op_timeout_s: float, once: Callable[[int], Awaitable[bool]]
) -> tuple[list[float], bool]:
    """Run `once(i)` up to `runs` times; returns the durations and whether every run verified."""
    times: list[float] = []
    all_ok = True
    for i in range(runs):
        if not budget.allows():
            break
        started = time.perf_counter()
        ok = await asyncio.wait_for(once(i), op_timeout_s)
        times.append(time.perf_counter() - started)
        all_ok = all_ok and ok
    return times, all_ok


async def bench_fetch(
    bus: NatsBus, args: argparse.Namespace, work: Path, budget: Budget
) -> tuple[int, list[FetchStats], ResumeStats | None]:
    """Publish one random object; time ours, get() and get(writeinto=) in that order; then resume."""
    size_bytes = args.size_mb * MB
    source = work / "artifact.bin"
    source.write_bytes(os.urandom(size_bytes))
    name = "bench-artifact"
    summary = await bus.objects.put_file(ARTIFACT_BUCKET, name, source)
    expected = sha256_file(source)
    if summary.sha256 != expected or summary.size_bytes != size_bytes:
        raise SystemExit(f"published object does not match the source ({summary})")
    source.unlink()
    print(f"published {size_bytes / MB:g} MB in {summary.chunks} chunks", file=sys.stderr)
    store = await bus.js.object_store(ARTIFACT_BUCKET)

    async def ours(i: int) -> bool:
        dest = work / f"ours-{i}.bin"
        result = await bus.objects.fetch_to_file(ARTIFACT_BUCKET, name, dest, expected_sha256=expected)
        dest.unlink()
        return result.sha256 == expected and result.size_bytes == size_bytes

    lib_data: list[bytes] = []

    async def lib_get(_: int) -> bool:
        lib_data.append((await store.get(name)).data or b"")
        return True

    async def lib_writeinto(i: int) -> bool:
        with (work / f"writeinto-{i}.bin").open("wb") as f:
            await store.get(name, writeinto=f)
        return True

    for i in range(args.warmup):
        await asyncio.wait_for(ours(-1 - i), args.op_timeout_s)

    results: list[FetchStats] = []
    times, ok = await timed_runs(args.runs, budget, args.op_timeout_s, ours)
    results.append(fetch_stats("ours: NatsObjects.fetch_to_file", size_bytes, times, ok))

    times, _ = await timed_runs(args.lib_runs, budget, args.op_timeout_s, lib_get)
    ok = all(hashlib.sha256(d).hexdigest() == expected for d in lib_data)
    lib_data.clear()
    results.append(fetch_stats("nats-py ObjectStore.get()", size_bytes, times, ok))

    times, _ = await timed_runs(args.runs, budget, args.op_timeout_s, lib_writeinto)
    ok = True
    for i in range(len(times)):
        path = work / f"writeinto-{i}.bin"
        ok = ok and sha256_file(path) == expected
        path.unlink()
    results.append(fetch_stats("nats-py ObjectStore.get(writeinto=f)", size_bytes, times, ok))

    resume = await bench_resume(bus, name, expected, size_bytes, work, args, budget)
    return size_bytes, results, resume


async def bench_resume(
    bus: NatsBus,
    name: str,
    expected: str,
    size_bytes: int,
    work: Path,
    args: argparse.Namespace,
    budget: Budget,
) -> ResumeStats | None:
    """Interrupt a fetch past half the bytes, fetch again; `--resume-runs` cycles, medians."""
    partials: list[int] = []
    first_parts: list[float] = []
    resumed_from: list[int] = []
    second_parts: list[float] = []
    digest_ok = True
    for i in range(args.resume_runs):
        if not budget.allows():
            break
        dest = work / f"resume-{i}.bin"
        fired = False

        def cut_at_half(done: int, total: int) -> None:
            nonlocal fired
            if not fired and done > total // 2:
                fired = True
                raise Interrupted(f"interrupted at {done} of {total} bytes")

        started = time.perf_counter()
        try:
            await asyncio.wait_for(
                bus.objects.fetch_to_file(ARTIFACT_BUCKET, name, dest, on_progress=cut_at_half),
                args.op_timeout_s,
            )
            raise SystemExit("resume benchmark: the first fetch was not interrupted")
        except Interrupted:
            first_parts.append(time.perf_counter() - started)
        partials.append(dest.with_name(dest.name + ".part").stat().st_size)

        started = time.perf_counter()
        result = await asyncio.wait_for(
            bus.objects.fetch_to_file(ARTIFACT_BUCKET, name, dest, expected_sha256=expected),
            args.op_timeout_s,
        )
        second_parts.append(time.perf_counter() - started)
        resumed_from.append(result.resumed_from_bytes)
        digest_ok = (
            digest_ok
            and sha256_file(dest) == expected == result.sha256
            and 0 < result.resumed_from_bytes < size_bytes
        )
        dest.unlink()
    if not second_parts:
        return None
    second_s = statistics.median(second_parts)
    second_bytes = size_bytes - int(statistics.median(resumed_from))
    return ResumeStats(
        runs=len(second_parts),
        interrupted_after_bytes=int(statistics.median(partials)),
        first_part_s=round(statistics.median(first_parts), 4),
        resumed_from_bytes=int(statistics.median(resumed_from)),
        second_part_bytes=second_bytes,
        second_part_times_s=[round(t, 4) for t in second_parts],
        second_part_s=round(second_s, 4),
        second_part_mb_per_s=round(second_bytes / MB / second_s, 1),
        digest_ok=digest_ok,
    )


def twin_payload(seq: int) -> bytes:
    """A ~200 B desired-state document carrying its sequence number."""
    return json.dumps(
        {
            "seq": seq,
            "model": "detector",
            "version": "1.4.2",
            "artifact": "sha256-" + "ab" * 32,
            "runtime": "onnxruntime",
            "rollout": "canary-7",
        }
    ).encode()


async def bench_kv(url: str, n: int, budget: Budget, op_timeout_s: float) -> list[LatencyStats]:
    key = StateKey(DEVICE_ID, "desired")
    put_samples: list[float] = []
    watch_samples: list[float] = []
    async with NatsBus(url, name="bench-putter") as putter, NatsBus(url, name="bench-watcher") as watcher:
        for i in range(20):  # warm-up: bind the bucket, settle the connection
            await putter.put_state(key, twin_payload(-1 - i))
        for i in range(n):
            if not budget.allows():
                break
            started = time.perf_counter()
            await putter.put_state(key, twin_payload(i), timeout_s=op_timeout_s)
            put_samples.append(time.perf_counter() - started)

        async with await watcher.watch_state("desired", DEVICE_ID) as watch:
            # Deliveries are timestamped by their own task, so a delivery that beats the PubAck
            # is not counted as late as the PubAck.
            received: asyncio.Queue[tuple[int, float]] = asyncio.Queue()

            async def record() -> None:
                async for update in watch:
                    at = time.perf_counter()
                    if update.payload is not None:
                        received.put_nowait((json.loads(update.payload)["seq"], at))

            recorder = asyncio.create_task(record())
            try:
                await asyncio.wait_for(received.get(), op_timeout_s)  # the latest value comes first
                for i in range(n):
                    if not budget.allows():
                        break
                    seq = n + i
                    started = time.perf_counter()
                    await putter.put_state(key, twin_payload(seq), timeout_s=op_timeout_s)
                    for _ in range(10):  # an older revision can precede ours at most a few times
                        seen, at = await asyncio.wait_for(received.get(), op_timeout_s)
                        if seen == seq:
                            break
                    else:
                        raise SystemExit(f"watcher never saw seq {seq}")
                    watch_samples.append(at - started)
            finally:
                recorder.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await recorder
    return [
        latency_stats("KV put (PubAck round trip)", put_samples),
        latency_stats("KV put -> watcher delivery (2nd connection)", watch_samples),
    ]


async def run(args: argparse.Namespace) -> Report:
    budget = Budget(args.budget_s)
    with tempfile.TemporaryDirectory(prefix="edgefabric-bench-") as tmp:
        work = Path(tmp)
        with EmbeddedBroker(work / "broker") as broker:
            async with NatsBus(broker.nats_url, name="bench-fetch") as bus:
                await bus.provision()
                size_bytes, fetch, resume = await bench_fetch(bus, args, work, budget)
            kv = await bench_kv(broker.nats_url, args.kv_n, budget, args.op_timeout_s)
    ours, get, writeinto = fetch  # bench_fetch's order
    return Report(
        benchmark="transport",
        date=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        command=" ".join(["python", *sys.argv]),
        machine=machine_info(),
        size_bytes=size_bytes,
        fetch=fetch,
        speedup_vs_get=round(ours.median_mb_per_s / get.median_mb_per_s, 1) if get.runs else None,
        speedup_vs_writeinto=(
            round(ours.median_mb_per_s / writeinto.median_mb_per_s, 1) if writeinto.runs else None
        ),
        resume=resume,
        kv=kv,
        budget_exhausted=budget.exhausted,
    )


def print_report(report: Report) -> None:
    m = report.machine
    print(f"\nTransport benchmark, {report.date}")
    print(
        f"machine: {m.usable_cpus} usable CPUs ({m.cpu_model}), {m.platform}, Python {m.python}, "
        f"{m.nats_server}, nats-py {m.nats_py}"
    )
    print(f"\nFetch of one {report.size_bytes / MB:g} MB object (median of runs)")
    print(f"{'variant':<40} {'runs':>4} {'median s':>9} {'MB/s':>8} {'best MB/s':>10} {'sha256':>7}")
    for f in report.fetch:
        print(
            f"{f.variant:<40} {f.runs:>4} {f.median_s:>9.3f} {f.median_mb_per_s:>8.1f} "
            f"{f.best_mb_per_s:>10.1f} {'ok' if f.digest_ok else 'FAIL':>7}"
        )
    print(
        f"speedup ours / get(): {report.speedup_vs_get}x   ours / get(writeinto=): "
        f"{report.speedup_vs_writeinto}x"
    )
    if report.resume:
        r = report.resume
        print(
            f"\nResume (median of {r.runs}): interrupted with "
            f"{r.interrupted_after_bytes / MB:.1f} MB on disk "
            f"({r.first_part_s:.3f} s); second fetch resumed from {r.resumed_from_bytes / MB:.1f} MB, "
            f"fetched {r.second_part_bytes / MB:.1f} MB in {r.second_part_s:.3f} s "
            f"({r.second_part_mb_per_s:.1f} MB/s incl. re-hashing the prefix); "
            f"sha256 {'ok' if r.digest_ok else 'FAIL'}"
        )
    print(f"\n{'KV latency':<46} {'n':>5} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'max ms':>8}")
    for k in report.kv:
        print(f"{k.what:<46} {k.n:>5} {k.p50_ms:>8.3f} {k.p95_ms:>8.3f} {k.p99_ms:>8.3f} {k.max_ms:>8.3f}")
    if report.budget_exhausted:
        print("\nWARNING: --budget-s ran out; some blocks have fewer runs than asked")


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Artifact fetch throughput, fetch resume and KV twin latency on an embedded "
        "nats-server (loopback only).",
    )
    parser.add_argument("--size-mb", type=positive_int, default=50, help="object size in MB (10^6 bytes)")
    parser.add_argument(
        "--runs", type=positive_int, default=7, help="timed runs of our fetcher and of get(writeinto=)"
    )
    parser.add_argument(
        "--lib-runs",
        type=positive_int,
        default=3,
        help="timed runs of the library get() (slow: ~10 s each at 50 MB)",
    )
    parser.add_argument("--warmup", type=int, default=1, help="untimed fetches (ours) before timing")
    parser.add_argument("--resume-runs", type=positive_int, default=3, help="interrupt-then-resume cycles")
    parser.add_argument("--kv-n", type=positive_int, default=500, help="samples per KV latency test")
    parser.add_argument("--op-timeout-s", type=float, default=120.0, help="limit for any single operation")
    parser.add_argument("--budget-s", type=float, default=900.0, help="limit for the whole run")
    parser.add_argument("--json-out", type=Path, default=DEFAULT_JSON, help="where to write the JSON report")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        report = asyncio.run(run(args))
    except FabricError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BUS_FAILED
    except TimeoutError:
        print(f"error: an operation took longer than --op-timeout-s {args.op_timeout_s:g}", file=sys.stderr)
        return EXIT_BUS_FAILED
    print_report(report)
    args.json_out.parent.mkdir(parents=True, exist_ok=True)
    args.json_out.write_bytes(msgspec.json.format(msgspec.json.encode(report), indent=2) + b"\n")
    print(f"\nJSON report: {args.json_out}")
    checks = [f.digest_ok for f in report.fetch] + [report.resume.digest_ok if report.resume else True]
    return EXIT_OK if all(checks) else EXIT_CHECK_FAILED


if __name__ == "__main__":
    sys.exit(main())
