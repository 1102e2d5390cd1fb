"""`GET /api/v1/devices?limit=100` with 10,000 enrolled devices, under a loopback load generator.

Setup: a data dir whose devices are enrolled through the real `EnrollmentService` (keys, proofs,
hashed credentials, labels), then a real `edgefabric up` subprocess on it (its own process, so the
load generator does not share its GIL) with rate limits raised for the benchmark. Load: `clients`
keep-alive HTTP/1.1 connections (httpx, asyncio) each sending requests back to back; latency is
measured per request on the client. The first page, a label filter and a deep page are mixed.
"""

from __future__ import annotations

import asyncio
import base64
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx
import msgspec
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from control_plane.app import Services
from control_plane.audit.schemas import SYSTEM_ACTOR
from control_plane.clock import SystemClock
from control_plane.config import ControlPlaneConfig
from control_plane.fleet.schemas import CreateEnrollmentTokenRequest
from control_plane.server import open_data_dir
from protocols.messages import EnrollmentRequest


def queries(devices: int) -> tuple[str, ...]:
    """The first page, a label-filtered page and the last full page."""
    base = "/api/v1/devices?limit=100"
    return (base, f"{base}&label=site=s3", f"{base}&offset={max(0, devices - 100)}")


class DevicesListStats(msgspec.Struct, frozen=True, kw_only=True):
    devices: int
    enroll_s: float
    clients: int
    requests: int
    duration_s: float
    requests_per_s: float
    p50_ms: float
    p99_ms: float
    max_ms: float
    single_client_p50_ms: float
    single_client_p99_ms: float
    errors: int


def enroll_devices(data_dir: Path, devices: int) -> tuple[str, float]:
    """Enroll `devices` devices into a fresh data dir; returns (admin token, seconds taken)."""
    config = ControlPlaneConfig(data_dir=str(data_dir))
    db = open_data_dir(config)
    try:
        services = Services.build(config, db, SystemClock())
        admin = services.tokens.bootstrap_admin(ttl_days=None, keep=lambda _: None)
        assert admin is not None
        started = time.perf_counter()
        request = CreateEnrollmentTokenRequest(name="bench", max_uses=devices, profile="cpu-x86_64")
        token = services.enrollment.create_token(SYSTEM_ACTOR, request).token
        for i in range(devices):
            key = Ed25519PrivateKey.generate()
            public = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
            services.enrollment.enroll(
                EnrollmentRequest(
                    token=token,
                    public_key=base64.b64encode(public).decode(),
                    proof=base64.b64encode(key.sign(token.encode())).decode(),
                    profile="cpu-x86_64",
                    labels={"site": f"s{i % 10}", "tier": "gold" if i % 3 == 0 else "silver"},
                ),
                api_url="http://127.0.0.1",
            )
        return admin.token, time.perf_counter() - started
    finally:
        db.close()


def start_control_plane(data_dir: Path) -> tuple[subprocess.Popen[str], str]:
    """`edgefabric up` on the prepared data dir, rate limits out of the way; (process, API URL)."""
    config_file = data_dir.parent / "bench.toml"
    config_file.write_text(
        "rate_limit_per_ip = { burst = 1000000, per_s = 1000000.0 }\n"
        "rate_limit_per_identity = { burst = 1000000, per_s = 1000000.0 }\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGEFABRIC_")}
    process = subprocess.Popen(
        [sys.executable, "-m", "control_plane.cli", "up", "--config", str(config_file), "--data-dir",
         str(data_dir), "--port", "0", "--no-advertise"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env,
    )  # fmt: skip
    assert process.stdout is not None
    deadline = time.monotonic() + 60
    api_url = ""
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        if line.startswith("api: "):
            api_url = line.split(" ", 1)[1].strip()
        if line.startswith("ready"):
            return process, api_url
    process.kill()
    raise RuntimeError("edgefabric up did not become ready")


async def load(
    api_url: str, token: str, paths: tuple[str, ...], *, clients: int, requests: int
) -> tuple[list[float], int, float]:
    """`requests` GETs of `paths` over `clients` connections; (latencies in ms, errors, wall seconds)."""
    latencies: list[float] = []
    errors = 0
    per_client = max(1, requests // clients)

    async def client(index: int) -> None:
        nonlocal errors
        headers = {"Authorization": f"Bearer {token}"}
        async with httpx.AsyncClient(base_url=api_url, headers=headers, timeout=30) as http:
            for i in range(per_client):
                started = time.perf_counter()
                response = await http.get(paths[(index + i) % len(paths)])
                latencies.append((time.perf_counter() - started) * 1000)
                if response.status_code != 200 or not response.json()["items"]:
                    errors += 1

    started = time.perf_counter()
    await asyncio.gather(*(client(i) for i in range(clients)))
    return latencies, errors, time.perf_counter() - started


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def measure(workdir: Path, *, devices: int, clients: int, requests: int) -> DevicesListStats:
    data_dir = workdir / "data"
    token, enroll_s = await asyncio.to_thread(enroll_devices, data_dir, devices)
    process, api_url = start_control_plane(data_dir)
    try:
        paths = queries(devices)
        await load(api_url, token, paths, clients=clients, requests=min(200, requests))  # warm-up
        single, _, _ = await load(api_url, token, paths, clients=1, requests=min(500, requests))
        latencies, errors, wall_s = await load(api_url, token, paths, clients=clients, requests=requests)
    finally:
        process.terminate()
        process.wait(timeout=30)
    return DevicesListStats(
        devices=devices,
        enroll_s=round(enroll_s, 2),
        clients=clients,
        requests=len(latencies),
        duration_s=round(wall_s, 3),
        requests_per_s=round(len(latencies) / wall_s, 1),
        p50_ms=round(statistics.median(latencies), 2),
        p99_ms=round(percentile(latencies, 0.99), 2),
        max_ms=round(max(latencies), 2),
        single_client_p50_ms=round(statistics.median(single), 2),
        single_client_p99_ms=round(percentile(single, 0.99), 2),
        errors=errors,
    )
