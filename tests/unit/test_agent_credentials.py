"""The agent's broker credentials on disk (the files enrollment writes): key, NATS JWT, MQTT JWT."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

from edge_agent.config import AgentConfig
from edge_agent.credentials import (
    CREDENTIALS_DIRNAME,
    DEVICE_KEY_FILENAME,
    MQTT_JWT_FILENAME,
    NATS_JWT_FILENAME,
    mqtt_login,
    nats_user_auth,
)
from edge_agent.errors import ConfigError

JWT_1 = "eyJhIjoxfQ.eyJiIjoxfQ.c2ln"
JWT_2 = "eyJhIjoyfQ.eyJiIjoyfQ.c2ln"


def _enrolled(tmp_path: Path, key: object | None = None) -> tuple[AgentConfig, Ed25519PrivateKey]:
    """A state dir laid out the way enrollment leaves it."""
    device_key = Ed25519PrivateKey.generate()
    files = tmp_path / CREDENTIALS_DIRNAME
    files.mkdir(mode=0o700, parents=True)
    pem_key = key if key is not None else device_key
    pem = pem_key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())  # type: ignore[attr-defined]
    (files / DEVICE_KEY_FILENAME).write_bytes(pem)
    (files / NATS_JWT_FILENAME).write_text(JWT_1 + "\n")
    (files / MQTT_JWT_FILENAME).write_text(JWT_2)
    config = AgentConfig(
        device_id="dev-1",
        state_dir=str(tmp_path),
        device_key=str(files / DEVICE_KEY_FILENAME),
        nats_user_jwt=str(files / NATS_JWT_FILENAME),
        mqtt_user_jwt=str(files / MQTT_JWT_FILENAME),
    )
    return config, device_key


def test_nats_auth_signs_with_the_device_key_and_rereads_a_renewed_jwt(tmp_path: Path) -> None:
    config, device_key = _enrolled(tmp_path)
    auth = nats_user_auth(config)
    assert auth is not None
    device_key.public_key().verify(auth.sign(b"nonce"), b"nonce")  # raises if not the device's key
    assert auth.jwt() == JWT_1
    (tmp_path / CREDENTIALS_DIRNAME / NATS_JWT_FILENAME).write_text(JWT_2)  # renewal rewrites the file
    assert auth.jwt() == JWT_2


def test_without_a_jwt_the_agent_keeps_its_other_nats_options() -> None:
    assert nats_user_auth(AgentConfig(device_id="dev-1", state_dir="/tmp/x")) is None


def test_jwt_without_a_key_or_with_a_wrong_key_is_a_config_error(tmp_path: Path) -> None:
    config, _ = _enrolled(tmp_path / "a")
    with pytest.raises(ConfigError, match="device_key"):
        nats_user_auth(AgentConfig(device_id="dev-1", state_dir="/tmp/x", nats_user_jwt=config.nats_user_jwt))
    wrong, _ = _enrolled(tmp_path / "b", key=ec.generate_private_key(ec.SECP256R1()))
    with pytest.raises(ConfigError, match="expected an Ed25519 key"):
        nats_user_auth(wrong)
    (tmp_path / "a" / CREDENTIALS_DIRNAME / NATS_JWT_FILENAME).write_text("not a jwt")
    with pytest.raises(ConfigError, match="nats_user_jwt"):
        nats_user_auth(config)


def test_mqtt_login_sends_the_bearer_jwt_as_password(tmp_path: Path) -> None:
    config, _ = _enrolled(tmp_path)
    assert mqtt_login(config) == ("dev-1", JWT_2)
    plain = AgentConfig(device_id="dev-1", state_dir="/tmp/x", mqtt_username="u", mqtt_password="p")
    assert mqtt_login(plain) == ("u", "p")
