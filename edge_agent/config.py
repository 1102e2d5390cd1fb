"""The agent's configuration: one frozen Struct, loaded once by the CLI and passed down.

Precedence: defaults < TOML file < `EDGEFABRIC_AGENT_<KEY>` environment < command-line flags.
Unknown keys are refused (typos fail loudly); a bad value is one `ConfigError` naming the key and
where the value came from.
"""

from __future__ import annotations

import os
import re
import socket
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

import msgspec

from edge_agent.errors import ConfigError
from protocols.identifiers import DeviceId, ProfileName

ENV_PREFIX = "EDGEFABRIC_AGENT_"
Fraction = Annotated[float, msgspec.Meta(ge=0.0, le=1.0)]
Port = Annotated[int, msgspec.Meta(ge=0, le=65535)]
PositiveSeconds = Annotated[float, msgspec.Meta(gt=0)]


def default_state_dir() -> Path:
    """`/var/lib/edgefabric` as root, `~/.local/share/edgefabric` otherwise."""
    return Path("/var/lib/edgefabric") if os.geteuid() == 0 else Path.home() / ".local/share/edgefabric"


def default_config_path() -> Path:
    return (
        Path("/etc/edgefabric/agent.toml")
        if os.geteuid() == 0
        else Path.home() / ".config/edgefabric/agent.toml"
    )


def default_device_id() -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "-", socket.gethostname()).strip("-_")[:64] or "device"


class AgentConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Everything the agent process needs to know. Paths are strings as written by the user."""

    device_id: DeviceId
    profile: ProfileName | None = None
    """Hardware profile to serve; None: the most preferred one detected on this host."""
    state_dir: str
    http_host: str = "127.0.0.1"
    http_port: Port = 8484
    nats_url: str | None = None
    nats_credentials: str | None = None
    nats_token: str | None = None
    mqtt_url: str | None = None
    mqtt_username: str | None = None
    mqtt_password: str | None = None
    device_key: str | None = None
    """Path to the device's Ed25519 private key (PEM); signs the NATS server's nonce."""
    nats_user_jwt: str | None = None
    """Path to the device's NATS user JWT (re-read at every reconnect); needs `device_key`."""
    mqtt_user_jwt: str | None = None
    """Path to the device's bearer MQTT JWT, sent as the MQTT password instead of `mqtt_password`."""
    artifact_base_url: str | None = None
    """HTTP base serving `metadata/` and `targets/` (MQTT-only devices download over HTTP)."""
    http_token: str | None = None
    trusted_root: str | None = None
    """Path to the TUF root.json this device trusts (written by enrollment)."""
    telemetry_interval_s: PositiveSeconds = 60.0
    heartbeat_interval_s: PositiveSeconds = 30.0
    queue_max_bytes: Annotated[int, msgspec.Meta(ge=4096)] = 16 * 1024 * 1024
    max_batch_size: Annotated[int, msgspec.Meta(ge=1, le=1024)] = 8
    max_queue_delay_ms: Annotated[float, msgspec.Meta(ge=0)] = 2.0
    shadow_sample_fraction: Fraction = 0.1
    inference_threads: Annotated[int, msgspec.Meta(ge=1, le=256)] | None = None

    @property
    def state_path(self) -> Path:
        return Path(self.state_dir).expanduser()

    @property
    def is_offline(self) -> bool:
        """No broker configured: serve what is installed, never reconcile."""
        return self.nats_url is None and self.mqtt_url is None


_FIELDS = set(AgentConfig.__struct_fields__)


def _from_env(env: Mapping[str, str]) -> dict[str, str]:
    values = {}
    for name, value in env.items():
        if name.startswith(ENV_PREFIX):
            key = name.removeprefix(ENV_PREFIX).lower()
            if key not in _FIELDS:
                raise ConfigError(key, "unknown setting", f"environment {name}")
            values[key] = value
    return values


def _from_file(path: Path) -> dict[str, Any]:
    try:
        data = tomllib.loads(path.read_text())
    except OSError as e:
        raise ConfigError("--config", e.strerror or str(e), str(path)) from e
    except tomllib.TOMLDecodeError as e:
        raise ConfigError("--config", f"not valid TOML: {e}", str(path)) from e
    unknown = sorted(set(data) - _FIELDS)
    if unknown:
        raise ConfigError(unknown[0], "unknown setting", str(path))
    return data


def load_config(
    path: Path | None = None,
    *,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> AgentConfig:
    """Merge defaults, the TOML file, the environment and flags (None values are ignored)."""
    layers: list[tuple[str, Mapping[str, Any]]] = [
        ("defaults", {"device_id": default_device_id(), "state_dir": str(default_state_dir())}),
    ]
    if path is not None:
        layers.append((str(path), _from_file(path)))
    layers.append(("environment", _from_env(os.environ if env is None else env)))
    layers.append(("command line", {k: v for k, v in (overrides or {}).items() if v is not None}))
    merged: dict[str, Any] = {}
    origin: dict[str, str] = {}
    for source, values in layers:
        merged.update(values)
        origin.update(dict.fromkeys(values, source))
    try:
        return msgspec.convert(merged, AgentConfig, strict=False)
    except msgspec.ValidationError as e:
        match = re.search(r"at `\$\.([A-Za-z_]+)`", str(e))
        key = match.group(1) if match else "?"
        reason = str(e).split(" - at `")[0]
        raise ConfigError(key, reason, origin.get(key, "")) from e


def write_config(config: AgentConfig, path: Path) -> None:
    """Write the non-default settings of `config` as TOML (used by `install` and `enroll`)."""
    from protocols.durable import write_atomic

    defaults = {"http_host": "127.0.0.1"}
    lines = []
    for key in AgentConfig.__struct_fields__:
        value = getattr(config, key)
        if value is None or defaults.get(key) == value:
            continue
        lines.append(f"{key} = {_toml_value(value)}")
    write_atomic(path, ("\n".join(lines) + "\n").encode(), mode=0o600)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'
