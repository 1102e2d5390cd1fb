"""`edgefabric-agent enroll`: join a control plane once, with a single-use enrollment token.

The device key (`<state_dir>/credentials/device.key`, Ed25519, PKCS#8 PEM, created if absent) signs
the token; `POST <api>/api/v1/enroll` answers the device's id, where to connect and its credentials.
They are written under `<state_dir>/credentials/` (`nats.jwt`, `mqtt.jwt`, `root.json`; the layout
is `edge_agent.credentials`'s) and into the agent config TOML (device id, broker URL,
`artifact_base_url`, `http_token`, `trusted_root`, `device_key`, `nats_user_jwt`/`mqtt_user_jwt`),
so a following `edgefabric-agent run` connects. `discover_api_url` finds a control plane on the local
network instead of `--url` (mDNS `_edgefabric._tcp.local.`, TXT property `api`).

Invariants:
- The private key never leaves the device: only its public key and a signature of the token are
  sent. Files holding secrets are 0600 inside a 0700 directory, each written atomically.
- The config is written last: a failed enrollment never leaves a config that names credentials
  which were not written. A refused enrollment changes nothing but creating the key.
- Every failure is one `EnrollmentError` line; when the control plane answered, the line carries
  its own `{"error", "detail"}` (e.g. `HTTP 401 unauthenticated: enrollment token used`).
"""

from __future__ import annotations

import base64
import json
import queue
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import msgspec
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from zeroconf import InterfaceChoice, ServiceBrowser, ServiceStateChange, Zeroconf

from edge_agent.config import AgentConfig, write_config
from edge_agent.credentials import (
    CREDENTIALS_DIRNAME,
    DEVICE_KEY_FILENAME,
    MQTT_JWT_FILENAME,
    NATS_JWT_FILENAME,
    load_device_key,
)
from edge_agent.errors import AgentError
from protocols.codec import encode, enrollment_reply_decoder
from protocols.durable import write_atomic
from protocols.errors import ProtocolError
from protocols.messages import EnrollmentReply, EnrollmentRequest, Transport

ENROLL_PATH = "/api/v1/enroll"
SERVICE_TYPE = "_edgefabric._tcp.local."
TRUSTED_ROOT_FILENAME = "root.json"


class EnrollmentError(AgentError):
    """Enrollment did not happen: the control plane refused it, or could not be reached or found."""

    def __init__(self, where: str, reason: str, *, status: int | None = None) -> None:
        super().__init__(f"enrollment at {where} failed: {reason}")
        self.where = where
        self.reason = reason
        self.status = status


def credentials_dir(state_dir: Path) -> Path:
    return state_dir / CREDENTIALS_DIRNAME


def load_or_create_device_key(state_dir: Path) -> Ed25519PrivateKey:
    """The device's Ed25519 key from `<state_dir>/credentials/device.key`, created (0600) if absent."""
    path = credentials_dir(state_dir) / DEVICE_KEY_FILENAME
    if path.exists():
        return load_device_key(path)
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    credentials_dir(state_dir).mkdir(mode=0o700, parents=True, exist_ok=True)
    write_atomic(path, pem, mode=0o600)
    return key


def enrollment_request(
    token: str,
    key: Ed25519PrivateKey,
    *,
    profile: str,
    hostname: str,
    labels: dict[str, str],
    agent_version: str,
    device_id: str | None,
    transport: Transport,
) -> EnrollmentRequest:
    """The request proving possession of `key`: its public key and its signature of `token`."""
    public_key = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return EnrollmentRequest(
        token=token,
        public_key=base64.b64encode(public_key).decode(),
        proof=base64.b64encode(key.sign(token.encode())).decode(),
        profile=profile,
        hostname=hostname,
        labels=labels,
        agent_version=agent_version,
        device_id=device_id,
        transport=transport,
    )


def post_enrollment(api_url: str, request: EnrollmentRequest, *, timeout_s: float = 30.0) -> EnrollmentReply:
    url = api_url.rstrip("/") + ENROLL_PATH
    http_request = urllib.request.Request(
        url,
        method="POST",
        data=encode(request),
        headers={"Content-Type": "application/json", "Accept": "application/json"},
    )
    try:
        with urllib.request.urlopen(http_request, timeout=timeout_s) as response:
            payload = response.read()
    except urllib.error.HTTPError as e:
        raise EnrollmentError(url, _error_line(e), status=e.code) from e
    except (urllib.error.URLError, OSError) as e:
        reason = e.reason if isinstance(e, urllib.error.URLError) else e
        raise EnrollmentError(url, f"cannot reach the control plane: {reason}") from e
    try:
        return enrollment_reply_decoder.decode(payload)
    except ProtocolError as e:
        raise EnrollmentError(url, f"unexpected reply: {e}") from e


def write_enrollment(
    reply: EnrollmentReply, *, base: AgentConfig, transport: Transport, config_path: Path
) -> AgentConfig:
    """Write the reply's credentials under `base.state_dir` and the resulting config to `config_path`.

    Settings of `base` that enrollment does not decide (ports, intervals, ...) are kept.
    """
    directory = credentials_dir(base.state_path)
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    jwt_paths: dict[str, str | None] = {}
    for filename, content in (
        (NATS_JWT_FILENAME, reply.broker_credentials),
        (MQTT_JWT_FILENAME, reply.mqtt_password),
    ):
        if content:
            write_atomic(directory / filename, content.encode(), mode=0o600)
            jwt_paths[filename] = str(directory / filename)
        else:
            (directory / filename).unlink(missing_ok=True)  # stale ones from an earlier enrollment
            jwt_paths[filename] = None
    trusted_root: str | None = None
    if reply.trusted_root:
        write_atomic(directory / TRUSTED_ROOT_FILENAME, reply.trusted_root.encode(), mode=0o644)
        trusted_root = str(directory / TRUSTED_ROOT_FILENAME)
    is_mqtt = transport == "mqtt"
    config = msgspec.structs.replace(
        base,
        device_id=reply.device_id,
        profile=reply.profile or base.profile,
        nats_url=None if is_mqtt else reply.nats_url,
        mqtt_url=reply.mqtt_url if is_mqtt else None,
        artifact_base_url=reply.artifact_base_url or None,
        http_token=reply.rest_token or None,
        device_key=str(directory / DEVICE_KEY_FILENAME),
        nats_user_jwt=None if is_mqtt else jwt_paths[NATS_JWT_FILENAME],
        mqtt_user_jwt=jwt_paths[MQTT_JWT_FILENAME] if is_mqtt else None,
        trusted_root=trusted_root or base.trusted_root,
    )
    config_path.parent.mkdir(parents=True, exist_ok=True)
    write_config(config, config_path)
    return config


def discover_api_url(*, timeout_s: float, interfaces: list[str] | None = None) -> str:
    """The API URL of the one control plane advertised over mDNS within `timeout_s`.

    `interfaces` limits browsing to those addresses (default: every interface). More than one
    control plane found is an error naming them: the operator then picks one with `--url`.
    """
    found: queue.Queue[str] = queue.Queue()

    def on_change(zeroconf: Zeroconf, service_type: str, name: str, state_change: ServiceStateChange) -> None:
        if state_change is ServiceStateChange.Added:
            found.put(name)

    zeroconf = Zeroconf(interfaces=interfaces or InterfaceChoice.All)
    try:
        browser = ServiceBrowser(zeroconf, SERVICE_TYPE, handlers=[on_change])
        deadline = time.monotonic() + timeout_s
        urls: dict[str, str] = {}
        while time.monotonic() < deadline:
            try:
                name = found.get(timeout=max(0.05, deadline - time.monotonic()))
            except queue.Empty:
                break
            info = zeroconf.get_service_info(SERVICE_TYPE, name, timeout=int(min(3.0, timeout_s) * 1000))
            api = info.properties.get(b"api") if info is not None else None
            if api:
                urls[name] = api.decode()
                deadline = min(deadline, time.monotonic() + 1.0)  # a moment more to notice a second one
        browser.cancel()
    finally:
        zeroconf.close()
    if not urls:
        raise EnrollmentError(
            "mDNS", f"no control plane ({SERVICE_TYPE}) found within {timeout_s:g} s; pass --url"
        )
    if len(urls) > 1:
        raise EnrollmentError(
            "mDNS", f"several control planes found ({', '.join(sorted(urls.values()))}); pass --url"
        )
    return next(iter(urls.values()))


def _error_line(error: urllib.error.HTTPError) -> str:
    try:
        body: Any = json.loads(error.read())
    except ValueError:
        body = None
    if isinstance(body, dict) and "error" in body:
        return f"HTTP {error.code} {body['error']}: {body.get('detail', '')}"
    return f"HTTP {error.code} {error.reason}"
