"""Fleet secrets as values: enrollment tokens, device REST credentials, proof of possession. No I/O.

An enrollment token is `eft_<id>_<secret>` and a device credential `efd_<id>_<secret>`: `id` is 16
hex digits (the lookup key), `secret` 64 hex digits (256 random bits). A device proves it holds its
Ed25519 key by signing the enrollment token: `proof = base64(sign(key, token))`, checked against
`public_key = base64(raw 32-byte Ed25519 public key)`.

Invariants:
- Only `sha256(secret)` is stored (`control_plane.auth.tokens.hash_secret`); comparisons are constant
  time, and an unknown id still costs one comparison (`DUMMY_HASH`).
- A malformed key or proof is an `InvalidArgumentError` (422); a well-formed proof that does not
  verify is an `AuthenticationError` (401). Nothing here touches the database.
"""

from __future__ import annotations

import base64
import binascii
import re
import secrets
from typing import NamedTuple

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from control_plane.auth.tokens import hash_secret
from control_plane.errors import AuthenticationError, InvalidArgumentError

ENROLLMENT_TOKEN_PREFIX = "eft_"
DEVICE_CREDENTIAL_PREFIX = "efd_"
ED25519_PUBLIC_KEY_BYTES = 32
ED25519_SIGNATURE_BYTES = 64


class IssuedSecret(NamedTuple):
    """A freshly issued `<prefix><id>_<secret>`; `presented` is shown once, `secret_hash` is stored."""

    prefix: str
    secret_id: str
    secret: str

    @property
    def presented(self) -> str:
        return f"{self.prefix}{self.secret_id}_{self.secret}"

    @property
    def secret_hash(self) -> str:
        return hash_secret(self.secret)


def issue_secret(prefix: str) -> IssuedSecret:
    return IssuedSecret(prefix, secrets.token_hex(8), secrets.token_hex(32))


def parse_secret(prefix: str, presented: str) -> tuple[str, str] | None:
    """`(id, secret)` of a well-formed `<prefix><id>_<secret>`, else None."""
    match = re.fullmatch(re.escape(prefix) + r"([0-9a-f]{16})_([0-9a-f]{64})", presented)
    return (match.group(1), match.group(2)) if match else None


def decode_public_key(public_key: str) -> bytes:
    """The raw 32 bytes of a base64 Ed25519 public key, or `InvalidArgumentError`."""
    raw = _base64("public_key", public_key)
    reason = f"expected a base64 raw Ed25519 public key of {ED25519_PUBLIC_KEY_BYTES} bytes"
    if len(raw) != ED25519_PUBLIC_KEY_BYTES:
        raise InvalidArgumentError("public_key", reason)
    try:
        Ed25519PublicKey.from_public_bytes(raw)
    except ValueError as e:
        raise InvalidArgumentError("public_key", reason) from e
    return raw


def verify_proof(public_key: bytes, token: str, proof: str) -> None:
    """Check that `proof` is the Ed25519 signature of `token` by `public_key`."""
    signature = _base64("proof", proof)
    if len(signature) != ED25519_SIGNATURE_BYTES:
        raise InvalidArgumentError(
            "proof", f"expected a base64 Ed25519 signature of {ED25519_SIGNATURE_BYTES} bytes"
        )
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(signature, token.encode())
    except InvalidSignature as e:
        raise AuthenticationError(
            "proof of possession failed: the proof is not the token signed by public_key"
        ) from e


def _base64(field: str, value: str) -> bytes:
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as e:
        raise InvalidArgumentError(field, "not valid base64") from e
