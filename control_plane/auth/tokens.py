"""Operator API tokens as values: format, generation, hashing, verification, roles, status. No I/O.

A token is `efp_<id>_<secret>`: `id` is 16 hex digits (public, the lookup key and audit identity),
`secret` is 64 hex digits (256 random bits). The fixed prefix and shape let secret scanners spot a
leaked token.

Invariants:
- Only `sha256(secret)` is stored; the secret exists in memory once, when issued.
- Verification compares digests with `hmac.compare_digest` (constant time), and an unknown id still
  costs one comparison (`DUMMY_HASH`), so timing does not tell known ids from unknown ones.
- Roles are ordered `viewer < operator < admin`; a role allows everything a lower one does.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import re
import secrets
from datetime import datetime
from typing import NamedTuple

TOKEN_PREFIX = "efp_"
_TOKEN_RE = re.compile(r"efp_([0-9a-f]{16})_([0-9a-f]{64})")


class Role(enum.StrEnum):
    VIEWER = "viewer"
    OPERATOR = "operator"
    ADMIN = "admin"

    def allows(self, required: Role) -> bool:
        """True if this role may do what `required` may."""
        order = list(Role)
        return order.index(self) >= order.index(required)


class TokenStatus(enum.StrEnum):
    ACTIVE = "active"
    EXPIRED = "expired"
    REVOKED = "revoked"


class IssuedToken(NamedTuple):
    token_id: str
    secret: str

    @property
    def presented(self) -> str:
        """The string a client sends: `efp_<id>_<secret>`."""
        return f"{TOKEN_PREFIX}{self.token_id}_{self.secret}"

    @property
    def token_hash(self) -> str:
        return hash_secret(self.secret)


def issue_token() -> IssuedToken:
    return IssuedToken(secrets.token_hex(8), secrets.token_hex(32))


def parse_token(presented: str) -> tuple[str, str] | None:
    """`(id, secret)` of a well-formed token, else None."""
    match = _TOKEN_RE.fullmatch(presented)
    return (match.group(1), match.group(2)) if match else None


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


DUMMY_HASH = hash_secret("edgefabric: compared against when the token id is unknown")


def secret_matches(secret: str, token_hash: str) -> bool:
    return hmac.compare_digest(hash_secret(secret), token_hash)


def token_status(*, expires_at: datetime | None, revoked_at: datetime | None, now: datetime) -> TokenStatus:
    """Revocation wins over expiry; a token is expired from the instant `expires_at` on."""
    if revoked_at is not None:
        return TokenStatus.REVOKED
    if expires_at is not None and now >= expires_at:
        return TokenStatus.EXPIRED
    return TokenStatus.ACTIVE
