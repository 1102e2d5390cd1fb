"""Issuing, listing, revoking and checking operator API tokens.

Invariants:
- Every change (create, revoke) and its audit row commit in one transaction.
- The secret is returned once, by `create`/`bootstrap_admin`; only its hash is stored.
- The last active admin token cannot be revoked (that would lock every operator out).
- `authenticate` accepts only a well-formed, known, unexpired, unrevoked token whose secret matches;
  each refusal is an `AuthenticationError` (401).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

from sqlite_utils import Database

from control_plane.audit.schemas import SYSTEM_ACTOR, Actor
from control_plane.audit.services import AuditService
from control_plane.auth.repositories import TokenRepository
from control_plane.auth.schemas import (
    CreatedToken,
    CreateTokenRequest,
    Identity,
    TokenInfo,
    TokenPage,
    TokenRecord,
)
from control_plane.auth.tokens import (
    DUMMY_HASH,
    Role,
    TokenStatus,
    issue_token,
    parse_token,
    secret_matches,
    token_status,
)
from control_plane.clock import Clock
from control_plane.errors import AuthenticationError, ConflictError, InvalidArgumentError, NotFoundError
from control_plane.pagination import PageRequest

BOOTSTRAP_TOKEN_NAME = "bootstrap-admin"
LAST_USED_RESOLUTION = timedelta(minutes=1)
"""`last_used_at` is rewritten at most this often per token, not on every request."""


class TokenService:
    def __init__(
        self,
        db: Database,
        audit: AuditService,
        clock: Clock,
        *,
        default_ttl_days: int,
        max_ttl_days: int,
    ) -> None:
        self._db = db
        self._tokens = TokenRepository(db)
        self._audit = audit
        self._clock = clock
        self._default_ttl_days = default_ttl_days
        self._max_ttl_days = max_ttl_days

    def create(self, actor: Actor, request: CreateTokenRequest) -> CreatedToken:
        ttl_days = request.ttl_days or self._default_ttl_days
        if ttl_days > self._max_ttl_days:
            raise InvalidArgumentError("ttl_days", f"at most {self._max_ttl_days} days on this server")
        return self._issue(actor, request.name, request.role, ttl_days)

    def bootstrap_admin(self, *, ttl_days: int | None, keep: Callable[[str], None]) -> CreatedToken | None:
        """On a database without tokens, issue the first admin token; else None.

        `keep(token)` runs inside the transaction (e.g. writes `admin.token`): if it fails, no token
        is stored, and the next start tries again.
        """
        with self._db.atomic():
            if not self._tokens.is_empty():
                return None
            created = self._issue(SYSTEM_ACTOR, BOOTSTRAP_TOKEN_NAME, Role.ADMIN, ttl_days)
            keep(created.token)
        return created

    def list(self, page: PageRequest) -> TokenPage:
        records, total = self._tokens.page(limit=page.limit, offset=page.offset)
        return TokenPage(
            items=[self._info(record) for record in records],
            total=total,
            limit=page.limit,
            offset=page.offset,
        )

    def get(self, token_id: str) -> TokenInfo:
        return self._info(self._require(token_id))

    def revoke(self, actor: Actor, token_id: str) -> TokenInfo:
        """Revoke `token_id`; revoking a revoked token changes nothing and succeeds."""
        now = self._clock.now()
        with self._db.atomic():
            record = self._require(token_id)
            if record.revoked_at is not None:
                return self._info(record)
            is_active = (
                token_status(expires_at=record.expires_at, revoked_at=None, now=now) is TokenStatus.ACTIVE
            )
            if record.role is Role.ADMIN and is_active and self._tokens.count_active(Role.ADMIN, now) <= 1:
                raise ConflictError("this is the last active admin token; create another admin token first")
            self._tokens.set_revoked(token_id, now)
            self._audit.record(actor, "token.revoked", f"token:{token_id}", {"name": record.name})
        return self.get(token_id)

    def authenticate(self, presented: str) -> Identity:
        parsed = parse_token(presented)
        if parsed is None:
            raise AuthenticationError("malformed bearer token (expected efp_<id>_<secret>)")
        token_id, secret = parsed
        record = self._tokens.get(token_id)
        matches = secret_matches(secret, record.token_hash if record else DUMMY_HASH)
        if record is None or not matches:
            raise AuthenticationError("invalid token")
        now = self._clock.now()
        status = token_status(expires_at=record.expires_at, revoked_at=record.revoked_at, now=now)
        if status is not TokenStatus.ACTIVE:
            raise AuthenticationError(f"token {status.value}")
        if record.last_used_at is None or now - record.last_used_at >= LAST_USED_RESOLUTION:
            self._tokens.set_last_used(token_id, now)
        return Identity(token_id=record.id, name=record.name, role=record.role, expires_at=record.expires_at)

    def _issue(self, actor: Actor, name: str, role: Role, ttl_days: int | None) -> CreatedToken:
        issued = issue_token()
        now = self._clock.now()
        record = TokenRecord(
            id=issued.token_id,
            name=name,
            role=role,
            token_hash=issued.token_hash,
            created_at=now,
            expires_at=None if ttl_days is None else now + timedelta(days=ttl_days),
        )
        with self._db.atomic():
            self._tokens.insert(record)
            self._audit.record(
                actor,
                "token.created",
                f"token:{record.id}",
                {
                    "name": name,
                    "role": role.value,
                    "expires_at": None if record.expires_at is None else record.expires_at.isoformat(),
                },
            )
        return CreatedToken(
            id=record.id,
            name=record.name,
            role=record.role,
            status=TokenStatus.ACTIVE,
            created_at=record.created_at,
            expires_at=record.expires_at,
            revoked_at=None,
            last_used_at=None,
            token=issued.presented,
        )

    def _require(self, token_id: str) -> TokenRecord:
        record = self._tokens.get(token_id)
        if record is None:
            raise NotFoundError("token", token_id)
        return record

    def _info(self, record: TokenRecord) -> TokenInfo:
        return TokenInfo(
            id=record.id,
            name=record.name,
            role=record.role,
            status=token_status(
                expires_at=record.expires_at, revoked_at=record.revoked_at, now=self._clock.now()
            ),
            created_at=record.created_at,
            expires_at=record.expires_at,
            revoked_at=record.revoked_at,
            last_used_at=record.last_used_at,
        )
