"""NATS JWTs (the claim layout of nats-io/jwt v2): operator, account and user claims, signed with nkeys.

A JWT is `base64url(header) . base64url(claims) . base64url(Ed25519 signature of the first two)`,
no padding, header `{"typ":"JWT","alg":"ed25519-nkey"}`. `iss` is the signer's public nkey: an
operator signs itself and its accounts, an account signs its users.

Invariants:
- Every limit the server reads is written explicitly: nats-server treats an absent limit as 0
  ("maximum subscriptions exceeded", no JetStream), so the defaults here are -1 (unlimited) for
  users and the explicit values `AccountLimits` is built with.
- `encode_jwt` fills `iss`, `iat` and `jti` itself; a caller cannot mint a claim that names
  another issuer than the key that signs it.
- `decode_jwt` returns claims only after checking the signature against the `iss` in them; it
  does not decide whether that issuer is trusted (the server does).
"""

from __future__ import annotations

import base64
import hashlib
import time
from typing import Literal

import msgspec
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from control_plane.broker_auth.nkey import KeyPair, NkeyError, Role, decode_public_nkey
from protocols.errors import FabricError

NO_LIMIT = -1
ConnectionType = Literal["STANDARD", "WEBSOCKET", "LEAFNODE", "MQTT"]
_HEADER = {"typ": "JWT", "alg": "ed25519-nkey"}


class Permission(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    allow: tuple[str, ...] = ()
    deny: tuple[str, ...] = ()


class ResponsePermission(msgspec.Struct, frozen=True, kw_only=True):
    """Lets a user answer requests it received, on their reply subjects only (`allow_responses`)."""

    max: int = 1
    """Replies per received request."""
    ttl: int = 0
    """How long the reply subject stays writable, in nanoseconds (0: no limit)."""


class User(msgspec.Struct, frozen=True, kw_only=True, tag_field="type", tag="user"):
    """The `nats` section of a user JWT."""

    pub: Permission = Permission()
    sub: Permission = Permission()
    resp: ResponsePermission | None = None
    subs: int = NO_LIMIT
    data: int = NO_LIMIT
    payload: int = NO_LIMIT
    bearer_token: bool = False
    """No nonce signature is checked: possession of the JWT is the credential (MQTT passwords)."""
    allowed_connection_types: tuple[ConnectionType, ...] = ()
    version: int = 2


class AccountLimits(msgspec.Struct, frozen=True, kw_only=True):
    """An account's limits; JetStream is enabled when `mem_storage` or `disk_storage` is not 0."""

    subs: int = NO_LIMIT
    data: int = NO_LIMIT
    payload: int = NO_LIMIT
    imports: int = NO_LIMIT
    exports: int = NO_LIMIT
    wildcards: bool = True
    conn: int = NO_LIMIT
    leaf: int = NO_LIMIT
    mem_storage: int = 0
    disk_storage: int = 0
    streams: int = 0
    consumer: int = 0


class Account(msgspec.Struct, frozen=True, kw_only=True, tag_field="type", tag="account"):
    """The `nats` section of an account JWT."""

    limits: AccountLimits
    revocations: dict[str, int] = {}
    """User public nkey -> unix seconds: that user's JWTs issued at or before it are refused."""
    version: int = 2


class Operator(msgspec.Struct, frozen=True, kw_only=True, tag_field="type", tag="operator"):
    """The `nats` section of an operator JWT."""

    system_account: str
    version: int = 2


class Claims(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """The registered claims of a NATS JWT plus its `nats` section."""

    sub: str
    """The public nkey the JWT is about."""
    name: str
    nats: User | Account | Operator
    exp: int | None = None
    """Unix seconds after which the server refuses the JWT and drops connections made with it."""
    iss: str = ""
    iat: int = 0
    jti: str = ""


class JwtError(FabricError):
    """A string is not a JWT we can read, or its signature does not verify."""


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def encode_jwt(claims: Claims, signer: KeyPair, *, issued_at_s: int | None = None) -> str:
    """Sign `claims` with `signer`; `iss`, `iat` (default: now) and `jti` are set here."""
    claims = msgspec.structs.replace(
        claims,
        iss=signer.public_key,
        iat=int(time.time()) if issued_at_s is None else issued_at_s,
        jti="",
    )
    digest = hashlib.sha256(msgspec.json.encode(claims)).digest()
    claims = msgspec.structs.replace(claims, jti=base64.b32encode(digest).decode().rstrip("="))
    signed = f"{_b64(msgspec.json.encode(_HEADER))}.{_b64(msgspec.json.encode(claims))}"
    return f"{signed}.{_b64(signer.sign(signed.encode()))}"


_ISSUER_ROLE = {Operator: Role.OPERATOR, Account: Role.OPERATOR, User: Role.ACCOUNT}


def decode_jwt(token: str) -> Claims:
    """The claims of `token` once its signature verifies against the issuer it names."""
    try:
        header_b64, claims_b64, signature_b64 = token.split(".")
        header = msgspec.json.decode(_unb64(header_b64))
        claims = msgspec.json.decode(_unb64(claims_b64), type=Claims)
        signature = _unb64(signature_b64)
    except (ValueError, msgspec.DecodeError) as e:
        raise JwtError(f"not a NATS JWT: {e}") from e
    if header != _HEADER:
        raise JwtError(f"unexpected JWT header {header}")
    kind = type(claims.nats).__name__.lower()
    try:
        issuer = decode_public_nkey(claims.iss, _ISSUER_ROLE[type(claims.nats)])
        Ed25519PublicKey.from_public_bytes(issuer).verify(signature, f"{header_b64}.{claims_b64}".encode())
    except (NkeyError, InvalidSignature) as e:
        raise JwtError(f"signature of {kind} JWT for {claims.sub} does not verify: {e}") from e
    return claims
