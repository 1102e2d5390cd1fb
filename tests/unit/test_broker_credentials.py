"""nkey and NATS JWT encoding (no server): published vectors, round trips, CRC and signature checks,
and the per-device grants as plain values."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta
from pathlib import Path

import msgspec
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from control_plane.broker_auth.authority import BrokerAuthority
from control_plane.broker_auth.claims import (
    Account,
    AccountLimits,
    Claims,
    JwtError,
    User,
    decode_jwt,
    encode_jwt,
)
from control_plane.broker_auth.nkey import (
    KeyPair,
    NkeyError,
    Role,
    crc16,
    decode_public_nkey,
    decode_seed,
    public_nkey,
    raw_public_key,
)
from control_plane.broker_auth.permissions import device_mqtt_permissions, device_nats_permissions
from control_plane.errors import InvalidArgumentError
from protocols import subjects
from protocols.subjects import StateKey

# Published test vectors of the nkeys libraries (nats-io/nkeys.py tests, nats.py tests).
VECTOR_SEED = "SUAMLK2ZNL35WSMW37E7UD4VZ7ELPKW7DHC3BWBSD2GCZ7IUQQXZIORRBU"
VECTOR_PUBLIC = "UCK5N7N66OBOINFXAYC2ACJQYFSOD4VYNU6APEJTAVFZB2SVHLKGEW7L"
VECTOR_NONCE = b"PXoWU7zWAMt75FY"
VECTOR_SIGNATURE = "ZaAiVDgB5CeYoXoQ7cBCmq+ZllzUnGUoDVb8C7PilWvCs8XKfUchAUhz2P4BYAF++Dg3w05CqyQFRDiGL6LrDw=="


def test_published_seed_gives_the_published_public_key_and_nonce_signature() -> None:
    pair = KeyPair.from_seed(VECTOR_SEED)
    assert pair.role is Role.USER
    assert pair.public_key == VECTOR_PUBLIC
    assert pair.seed == VECTOR_SEED
    assert base64.b64encode(pair.sign(VECTOR_NONCE)).decode() == VECTOR_SIGNATURE


def test_crc16_is_xmodem() -> None:
    assert crc16(b"123456789") == 0x31C3  # the CRC-16/XMODEM check value


@pytest.mark.parametrize("role", list(Role))
def test_keys_of_every_role_round_trip(role: Role) -> None:
    pair = KeyPair.generate(role)
    assert pair.public_key[0] == {Role.OPERATOR: "O", Role.ACCOUNT: "A", Role.USER: "U"}[role]
    assert pair.seed[:2] == "S" + pair.public_key[0]
    assert decode_seed(pair.seed) == (role, pair.private_key.private_bytes_raw())
    assert KeyPair.from_seed(pair.seed).public_key == pair.public_key
    raw = raw_public_key(pair.private_key.public_key())
    assert decode_public_nkey(pair.public_key, role) == raw


def test_one_changed_character_fails_the_crc() -> None:
    changed = VECTOR_PUBLIC[:10] + ("A" if VECTOR_PUBLIC[10] != "A" else "B") + VECTOR_PUBLIC[11:]
    with pytest.raises(NkeyError, match="CRC"):
        decode_public_nkey(changed, Role.USER)
    with pytest.raises(NkeyError, match="CRC"):
        decode_seed(VECTOR_SEED[:-1] + ("A" if VECTOR_SEED[-1] != "A" else "B"))


def test_a_key_of_another_role_or_length_is_refused() -> None:
    account = KeyPair.generate(Role.ACCOUNT).public_key
    with pytest.raises(NkeyError, match="expected a user key"):
        decode_public_nkey(account, Role.USER)
    with pytest.raises(NkeyError, match="32 bytes"):
        public_nkey(Role.USER, b"\x01" * 31)
    with pytest.raises(NkeyError, match="a seed holds 34 bytes"):
        decode_seed(public_nkey(Role.USER, b"\x01" * 32))


def test_a_device_public_key_is_its_user_nkey() -> None:
    device_key = Ed25519PrivateKey.generate()
    raw = raw_public_key(device_key.public_key())
    assert decode_public_nkey(public_nkey(Role.USER, raw), Role.USER) == raw


def test_jwt_round_trips_and_names_its_signer() -> None:
    account = KeyPair.generate(Role.ACCOUNT)
    user = KeyPair.generate(Role.USER)
    claims = Claims(sub=user.public_key, name="dev-1", exp=2_000_000_000, nats=User(bearer_token=True))
    token = encode_jwt(claims, account, issued_at_s=1_700_000_000)
    decoded = decode_jwt(token)
    assert decoded.iss == account.public_key and decoded.iat == 1_700_000_000 and decoded.jti
    assert msgspec.structs.replace(decoded, iss="", iat=0, jti="") == claims
    header = base64.urlsafe_b64decode(token.split(".")[0] + "==")
    assert msgspec.json.decode(header) == {"typ": "JWT", "alg": "ed25519-nkey"}


def test_jwt_limits_are_explicit_so_the_server_does_not_read_zero() -> None:
    user_token = encode_jwt(Claims(sub="U", name="u", nats=User()), KeyPair.generate(Role.ACCOUNT))
    body = msgspec.json.decode(base64.urlsafe_b64decode(user_token.split(".")[1] + "=="))
    assert (
        body["nats"] | {"subs": -1, "data": -1, "payload": -1, "type": "user", "version": 2} == body["nats"]
    )
    limits = AccountLimits(mem_storage=-1, disk_storage=-1, streams=-1, consumer=-1)
    account_token = encode_jwt(
        Claims(sub="A", name="a", nats=Account(limits=limits)), KeyPair.generate(Role.OPERATOR)
    )
    account_body = msgspec.json.decode(base64.urlsafe_b64decode(account_token.split(".")[1] + "=="))
    assert account_body["nats"]["limits"]["conn"] == -1
    assert account_body["nats"]["limits"]["disk_storage"] == -1


def test_tampered_or_wrongly_issued_jwt_does_not_decode() -> None:
    account = KeyPair.generate(Role.ACCOUNT)
    token = encode_jwt(Claims(sub="U", name="dev-1", nats=User()), account)
    header, payload, signature = token.split(".")
    widened = base64.urlsafe_b64encode(
        base64.urlsafe_b64decode(payload + "==").replace(b'"dev-1"', b'"dev-2"')
    ).decode()
    with pytest.raises(JwtError, match="does not verify"):
        decode_jwt(f"{header}.{widened.rstrip('=')}.{signature}")
    by_operator = encode_jwt(Claims(sub="U", name="dev-1", nats=User()), KeyPair.generate(Role.OPERATOR))
    with pytest.raises(JwtError, match="does not verify"):
        decode_jwt(by_operator)  # a user JWT must be issued by an account key
    with pytest.raises(JwtError, match="not a NATS JWT"):
        decode_jwt("not-a-jwt")


# --- per-device grants as values ---------------------------------------------------------------------


def _matches(pattern: str, subject: str) -> bool:
    """NATS subject matching (`*` one token, `>` the rest)."""
    want, have = pattern.split("."), subject.split(".")
    for i, token in enumerate(want):
        if token == ">":
            return len(have) > i
        if i >= len(have) or (token != "*" and token != have[i]):
            return False
    return len(want) == len(have)


def _subjects_of(device_id: str) -> list[str]:
    """Every concrete per-device subject a device could be addressed by, in both spellings."""
    channels = [
        subjects.telemetry(device_id),
        subjects.heartbeat(device_id),
        subjects.command(device_id, "rollback"),
        subjects.command_replies(device_id),
    ]
    twins = [StateKey(device_id, "desired"), StateKey(device_id, "reported")]
    return [
        *(c.nats for c in channels),
        *(c.mqtt.replace("/", ".") for c in channels),
        *(f"$KV.{subjects.TWIN_BUCKET}.{key.kv_key}" for key in twins),
        *(key.mqtt_topic.replace("/", ".") for key in twins),
        f"{subjects.device_inbox_prefix(device_id)}.abc.1",
        f"$JS.API.CONSUMER.CREATE.KV_{subjects.TWIN_BUCKET}.w.$KV.{subjects.TWIN_BUCKET}.dev.{device_id}.desired",
    ]


@pytest.mark.parametrize(("mine", "other"), [("dev-a", "dev-b"), ("a", "a_b"), ("a", "a-1"), ("a-1", "a")])
def test_no_grant_of_one_device_matches_a_subject_of_another(mine: str, other: str) -> None:
    publish, subscribe, _ = device_nats_permissions(mine)
    mqtt_publish, mqtt_subscribe = device_mqtt_permissions(mine)
    grants = [*publish.allow, *subscribe.allow, *mqtt_publish.allow, *mqtt_subscribe.allow]
    for subject in _subjects_of(other):
        assert not [g for g in grants if _matches(g, subject)], subject
    watched_through_a_consumer = f"$KV.{subjects.TWIN_BUCKET}.dev.{mine}.desired"
    for subject in _subjects_of(mine):
        assert any(_matches(g, subject) for g in grants) != (subject == watched_through_a_consumer), subject


def test_device_credentials_refuse_a_bad_key_or_naive_expiry(tmp_path: Path) -> None:
    authority = BrokerAuthority.load_or_create(tmp_path / "auth")
    with pytest.raises(InvalidArgumentError, match="32 bytes"):
        authority.device_credentials("dev-1", b"short", expires_at=datetime.now(UTC) + timedelta(hours=1))
    raw = raw_public_key(Ed25519PrivateKey.generate().public_key())
    with pytest.raises(InvalidArgumentError, match="timezone"):
        authority.device_credentials("dev-1", raw, expires_at=datetime(2030, 1, 1))
