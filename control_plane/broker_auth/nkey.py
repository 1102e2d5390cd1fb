"""NATS nkeys: Ed25519 keys in nats-server's text encoding, written here over `cryptography`.

An encoded key is base32 (RFC 4648, no padding) of `prefix bytes || 32 key bytes || CRC16`, the CRC
being CRC-16/XMODEM of everything before it, little-endian. A public key has one prefix byte whose
first base32 character names the role (`O` operator, `A` account, `U` user); a seed (the private
key) has two: `S` followed by the role, so `SU...` is a user seed.

Invariants:
- Decoding checks the CRC, the length and the expected role: a mistyped or truncated key, or an
  account key where a user key is expected, raises `NkeyError` instead of producing a different key.
- A device's Ed25519 public key *is* its NATS user key: `public_nkey(Role.USER, raw)` of the
  32 raw bytes, so the device signs the server's nonce with the private key it already has.
"""

from __future__ import annotations

import base64
import binascii
import enum
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from protocols.errors import FabricError

KEY_BYTES = 32
_SEED_PREFIX = 18 << 3  # "S"


class Role(enum.IntEnum):
    """The prefix byte of each kind of public nkey we use."""

    OPERATOR = 14 << 3  # "O"
    ACCOUNT = 0  # "A"
    USER = 20 << 3  # "U"


class NkeyError(FabricError):
    """A string is not a valid nkey of the expected role."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"invalid nkey: {reason}")
        self.reason = reason


def crc16(data: bytes) -> int:
    """CRC-16/XMODEM (polynomial 0x1021, initial value 0), as nkeys use it."""
    return binascii.crc_hqx(data, 0)


def _encode(prefix: bytes, key: bytes) -> str:
    body = prefix + key
    return base64.b32encode(body + crc16(body).to_bytes(2, "little")).decode().rstrip("=")


def _decode(text: str) -> bytes:
    """The checked bytes of an encoded nkey, CRC removed."""
    try:
        raw = base64.b32decode(text + "=" * (-len(text) % 8))
    except (binascii.Error, ValueError) as e:
        raise NkeyError(f"not base32: {e}") from e
    if len(raw) < 3:
        raise NkeyError("too short")
    body, checksum = raw[:-2], int.from_bytes(raw[-2:], "little")
    if crc16(body) != checksum:
        raise NkeyError("CRC mismatch")
    return body


def public_nkey(role: Role, public_key: bytes) -> str:
    """Encode 32 raw Ed25519 public-key bytes as a public nkey of `role`."""
    if len(public_key) != KEY_BYTES:
        raise NkeyError(f"an Ed25519 public key has {KEY_BYTES} bytes, not {len(public_key)}")
    return _encode(bytes([role]), public_key)


def decode_public_nkey(text: str, role: Role) -> bytes:
    """The 32 raw public-key bytes of a public nkey that must be of `role`."""
    body = _decode(text)
    if len(body) != 1 + KEY_BYTES:
        raise NkeyError(f"a public nkey holds {1 + KEY_BYTES} bytes, not {len(body)}")
    if body[0] != role:
        raise NkeyError(f"expected a {role.name.lower()} key, got prefix byte {body[0]}")
    return body[1:]


def encode_seed(role: Role, private_key: bytes) -> str:
    """Encode 32 raw Ed25519 private-key bytes as a seed (`S` + role)."""
    if len(private_key) != KEY_BYTES:
        raise NkeyError(f"an Ed25519 seed has {KEY_BYTES} bytes, not {len(private_key)}")
    prefix = bytes([_SEED_PREFIX | (role >> 5), (role & 31) << 3])
    return _encode(prefix, private_key)


def decode_seed(text: str) -> tuple[Role, bytes]:
    """The role and the 32 raw private-key bytes of a seed."""
    body = _decode(text)
    if len(body) != 2 + KEY_BYTES:
        raise NkeyError(f"a seed holds {2 + KEY_BYTES} bytes, not {len(body)}")
    if body[0] & 0xF8 != _SEED_PREFIX:
        raise NkeyError("not a seed (no S prefix)")
    role_byte = ((body[0] & 0x07) << 5) | (body[1] >> 3)
    try:
        role = Role(role_byte)
    except ValueError as e:
        raise NkeyError(f"unknown role prefix byte {role_byte}") from e
    return role, body[2:]


@dataclass(frozen=True)
class KeyPair:
    """An Ed25519 private key in one nkey role: signs JWTs and server nonces."""

    role: Role
    private_key: Ed25519PrivateKey

    @classmethod
    def generate(cls, role: Role) -> KeyPair:
        return cls(role, Ed25519PrivateKey.generate())

    @classmethod
    def from_seed(cls, seed: str) -> KeyPair:
        role, raw = decode_seed(seed)
        return cls(role, Ed25519PrivateKey.from_private_bytes(raw))

    @property
    def seed(self) -> str:
        return encode_seed(self.role, self.private_key.private_bytes_raw())

    @property
    def public_key(self) -> str:
        """The public nkey (`O...`, `A...`, `U...`)."""
        return public_nkey(self.role, raw_public_key(self.private_key.public_key()))

    def sign(self, data: bytes) -> bytes:
        """The raw 64-byte Ed25519 signature of `data`."""
        return self.private_key.sign(data)


def raw_public_key(public_key: Ed25519PublicKey) -> bytes:
    return public_key.public_bytes(Encoding.Raw, PublicFormat.Raw)
