"""The device's broker credentials on disk: written by enrollment, read by the agent at connect time.

Layout (the contract with enrollment), under `<state_dir>/credentials/` (directory 0700, files 0600):
- `device.key`: the device's Ed25519 private key, PEM (PKCS#8, unencrypted). It never leaves the
  device; its public key is the device's identity, and the control plane derives the device's
  NATS user key from it (`U` + the 32 raw public-key bytes).
- `nats.jwt`: the NATS user JWT, text. The agent signs the server's nonce with `device.key`.
- `mqtt.jwt`: the bearer JWT an MQTT-only device sends as its MQTT password.
Config keys `device_key`, `nats_user_jwt` and `mqtt_user_jwt` name these files (enrollment writes
both the files and the keys).

Invariants:
- The NATS JWT is re-read at every connect and reconnect, so renewal is an atomic rewrite of
  `nats.jwt`; the next reconnect uses it. The MQTT JWT is read when the bus is built.
- A missing, unreadable or wrong-type key is a `ConfigError` naming the config key, never a
  silent anonymous connection.
"""

from __future__ import annotations

from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from edge_agent.config import AgentConfig
from edge_agent.errors import ConfigError
from protocols.transports.nats_bus import UserJwtAuth

CREDENTIALS_DIRNAME = "credentials"
DEVICE_KEY_FILENAME = "device.key"
NATS_JWT_FILENAME = "nats.jwt"
MQTT_JWT_FILENAME = "mqtt.jwt"


def load_device_key(path: Path) -> Ed25519PrivateKey:
    """The device's Ed25519 private key from a PEM file (`ConfigError` naming `device_key` otherwise)."""
    try:
        key = load_pem_private_key(path.read_bytes(), password=None)
    except OSError as e:
        raise ConfigError("device_key", e.strerror or str(e), str(path)) from e
    except (ValueError, TypeError) as e:
        raise ConfigError("device_key", f"not an unencrypted PEM private key: {e}", str(path)) from e
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError("device_key", f"expected an Ed25519 key, got {type(key).__name__}", str(path))
    return key


def read_jwt(path: Path, key: str) -> str:
    """The JWT text in `path` (`ConfigError` naming config `key` when unreadable or empty)."""
    try:
        token = path.read_text().strip()
    except OSError as e:
        raise ConfigError(key, e.strerror or str(e), str(path)) from e
    if token.count(".") != 2:
        raise ConfigError(key, "does not hold a JWT", str(path))
    return token


def nats_user_auth(config: AgentConfig) -> UserJwtAuth | None:
    """JWT auth for the NATS bus when `nats_user_jwt` is configured; None otherwise."""
    if config.nats_user_jwt is None:
        return None
    if config.device_key is None:
        raise ConfigError("device_key", "needed with nats_user_jwt: it signs the server's nonce")
    jwt_path = Path(config.nats_user_jwt).expanduser()
    read_jwt(jwt_path, "nats_user_jwt")  # fail at start, not at the first connect
    key = load_device_key(Path(config.device_key).expanduser())
    return UserJwtAuth(jwt=lambda: read_jwt(jwt_path, "nats_user_jwt"), sign=key.sign)


def mqtt_login(config: AgentConfig) -> tuple[str | None, str | None]:
    """(username, password) for MQTT: with `mqtt_user_jwt`, the bearer JWT is the password and the
    username (which nats-server ignores, but MQTT needs for a password to be sent) defaults to the
    device id; otherwise `mqtt_username` / `mqtt_password` as configured."""
    if config.mqtt_user_jwt is None:
        return config.mqtt_username, config.mqtt_password
    token = read_jwt(Path(config.mqtt_user_jwt).expanduser(), "mqtt_user_jwt")
    return config.mqtt_username or config.device_id, token
