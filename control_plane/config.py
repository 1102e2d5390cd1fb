"""The control plane's one configuration: a frozen Struct loaded once by the CLI and passed down.

Precedence: defaults < TOML file (`--config`) < `EDGEFABRIC_<FIELD>` environment variables (top-level
scalar fields only, e.g. `EDGEFABRIC_PORT`) < command-line flags.

Invariants:
- Unknown keys are an error (a typo fails loudly), values are range-checked on load, and a bad value
  is a `ConfigError` naming its source.
- Every path the control plane writes derives from `data_dir`; nothing else reads the environment.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

import msgspec

from control_plane.errors import ConfigError

ENV_PREFIX = "EDGEFABRIC_"
DEFAULT_PORT = 8470

Port = Annotated[int, msgspec.Meta(ge=0, le=65535, description="0 picks a free port")]
Days = Annotated[int, msgspec.Meta(ge=1, le=36500)]


class RateLimit(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A token bucket: `burst` requests at once, refilled at `per_s` requests per second."""

    burst: Annotated[int, msgspec.Meta(ge=1)]
    per_s: Annotated[float, msgspec.Meta(gt=0)]


class ControlPlaneConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Settings of one control-plane process (`edgefabric up`)."""

    data_dir: str
    host: str = "127.0.0.1"
    port: Port = DEFAULT_PORT
    nats_url: str | None = None
    """An existing NATS server; None starts the embedded nats-server under `<data_dir>/broker`."""
    advertise: bool = True
    """Announce `_edgefabric._tcp.local.` over mDNS on the interface of `host`."""
    default_token_ttl_days: Days = 90
    max_token_ttl_days: Days = 365
    bootstrap_token_ttl_days: Days | None = None
    """Lifetime of the admin token created on first start; None: until revoked."""
    max_body_bytes: Annotated[int, msgspec.Meta(ge=1024)] = 1024 * 1024
    max_upload_bytes: Annotated[int, msgspec.Meta(ge=1024)] = 2 * 1024**3
    """The body limit of upload routes (`POST /api/v1/models`); every other route has `max_body_bytes`."""
    compile_timeout_s: Annotated[float, msgspec.Meta(gt=0)] = 3600.0
    """A compile job still running after this long is stopped and fails."""
    rate_limit_per_ip: RateLimit = RateLimit(burst=200, per_s=50.0)
    rate_limit_per_identity: RateLimit = RateLimit(burst=100, per_s=20.0)
    rate_limit_sensitive: RateLimit = RateLimit(burst=20, per_s=0.5)
    """Applied per IP and per identity, on top of the others, to `sensitive_paths`."""
    sensitive_paths: tuple[str, ...] = ("/api/v1/tokens", "/api/v1/enroll", "/api/v1/enrollment-tokens")
    heartbeat_interval_s: Annotated[float, msgspec.Meta(gt=0, le=3600)] = 30.0
    """How often the fleet's agents heartbeat (their `heartbeat_interval_s`)."""
    offline_after_missed_heartbeats: Annotated[int, msgspec.Meta(ge=1, le=100)] = 3
    """A device is `online` while its last heartbeat is younger than this many intervals."""
    device_flush_interval_s: Annotated[float, msgspec.Meta(gt=0, le=60)] = 1.0
    """How often heartbeats and reported states seen are written to the database (one batch each)."""
    device_broker_credential_ttl_days: Days = 365
    """Lifetime of the broker JWTs a device gets at enrollment (it re-enrolls with a new key after)."""
    timestamp_check_interval_s: Annotated[float, msgspec.Meta(gt=0, le=3600)] = 60.0
    """How often the TUF timestamp's expiry is checked (it is re-signed at half its lifetime)."""
    rollout_tick_interval_s: Annotated[float, msgspec.Meta(gt=0, le=60)] = 1.0
    """How often the rollout engine takes a step of every live rollout."""
    rollout_writes_per_tick: Annotated[int, msgspec.Meta(ge=1, le=10_000)] = 50
    """Desired-state writes the rollout engine makes per rollout and step (bounds one step's work)."""

    @property
    def data_path(self) -> Path:
        return Path(self.data_dir)

    @property
    def database_path(self) -> Path:
        return self.data_path / "control-plane.db"

    @property
    def blob_dir(self) -> Path:
        """Content-addressed blobs (models, artifacts)."""
        return self.data_path / "blobs"

    @property
    def tuf_dir(self) -> Path:
        """The release signer's TUF repository (metadata, signing keys, artifact archives)."""
        return self.data_path / "tuf"

    @property
    def build_dir(self) -> Path:
        """Compile job outputs: `<job_id>/<profile>/` and each job's worker log `<job_id>.log`."""
        return self.data_path / "builds"

    @property
    def broker_dir(self) -> Path:
        return self.data_path / "broker"

    @property
    def broker_auth_dir(self) -> Path:
        """The embedded broker's operator keys and revocation list (`control_plane.broker_auth`)."""
        return self.data_path / "broker-auth"

    @property
    def admin_token_path(self) -> Path:
        return self.data_path / "admin.token"


_SCALAR_FIELDS = (
    "data_dir",
    "host",
    "port",
    "nats_url",
    "advertise",
    "max_body_bytes",
    "max_upload_bytes",
    "compile_timeout_s",
)


def default_data_dir(environ: Mapping[str, str]) -> Path:
    """`$XDG_DATA_HOME/edgefabric-control-plane`, else `~/.local/share/edgefabric-control-plane`."""
    base = environ.get("XDG_DATA_HOME") or str(Path(environ.get("HOME", "~")).expanduser() / ".local/share")
    return Path(base) / "edgefabric-control-plane"


def load_config(
    *,
    file: Path | None = None,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> ControlPlaneConfig:
    """Merge defaults < `file` < `environ` < `overrides` (None values in `overrides` are skipped).

    Environment values are strings; they are parsed into the field's type (`"8470"` -> 8470).
    Without a `data_dir` anywhere, `default_data_dir(environ)` is used.
    """
    env = environ or {}
    merged: dict[str, Any] = {"data_dir": str(default_data_dir(env))}
    sources = ["flags"]
    if file is not None:
        try:
            merged.update(tomllib.loads(file.read_text()))
        except (OSError, tomllib.TOMLDecodeError) as e:
            raise ConfigError(str(file), str(e)) from e
        sources.insert(0, str(file))
    for name in _SCALAR_FIELDS:
        if ENV_PREFIX + name.upper() in env:
            merged[name] = env[ENV_PREFIX + name.upper()]
            sources.insert(-1, ENV_PREFIX + name.upper())
    merged.update({key: value for key, value in (overrides or {}).items() if value is not None})
    try:
        return msgspec.convert(merged, ControlPlaneConfig, strict=False)
    except msgspec.ValidationError as e:
        raise ConfigError(", ".join(sources), str(e)) from e
