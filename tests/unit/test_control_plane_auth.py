"""Operator API tokens without HTTP: format, hashing, roles, expiry, revocation, bootstrap, audit rows."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlite_utils import Database

from control_plane.app import Services
from control_plane.audit.schemas import Actor
from control_plane.auth.schemas import CreateTokenRequest
from control_plane.auth.tokens import (
    Role,
    TokenStatus,
    hash_secret,
    issue_token,
    parse_token,
    secret_matches,
    token_status,
)
from control_plane.config import ControlPlaneConfig
from control_plane.db import migrate, open_database
from control_plane.errors import AuthenticationError, ConflictError, InvalidArgumentError, NotFoundError
from control_plane.pagination import PageRequest
from tests.clock import FakeClock

ADMIN = Actor(id="0123456789abcdef", name="test-admin")


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    database = open_database(tmp_path / "control-plane.db")
    migrate(database)
    yield database
    database.close()


@pytest.fixture
def services(tmp_path: Path, db: Database, clock: FakeClock) -> Services:
    config = ControlPlaneConfig(data_dir=str(tmp_path), default_token_ttl_days=30, max_token_ttl_days=90)
    return Services.build(config, db, clock)


def _create(services: Services, name: str, role: Role, ttl_days: int | None = None) -> str:
    return services.tokens.create(ADMIN, CreateTokenRequest(name=name, role=role, ttl_days=ttl_days)).token


# --- values ------------------------------------------------------------------------------------


def test_issued_token_has_the_documented_shape_and_parses_back() -> None:
    issued = issue_token()
    presented = issued.presented
    assert presented.startswith("efp_") and len(presented) == 4 + 16 + 1 + 64
    assert parse_token(presented) == (issued.token_id, issued.secret)
    assert issued.token_hash == hash_secret(issued.secret) != issued.secret


@pytest.mark.parametrize(
    "presented",
    ["", "efp_", "efp_0123_abcd", "xyz_0123456789abcdef_" + "0" * 64, "efp_0123456789ABCDEF_" + "0" * 64],
)
def test_malformed_tokens_do_not_parse(presented: str) -> None:
    assert parse_token(presented) is None


def test_secret_matches_only_its_own_hash() -> None:
    a, b = issue_token(), issue_token()
    assert secret_matches(a.secret, a.token_hash)
    assert not secret_matches(b.secret, a.token_hash)


def test_roles_are_ordered_viewer_operator_admin() -> None:
    assert Role.ADMIN.allows(Role.OPERATOR) and Role.ADMIN.allows(Role.VIEWER)
    assert Role.OPERATOR.allows(Role.VIEWER) and not Role.OPERATOR.allows(Role.ADMIN)
    assert not Role.VIEWER.allows(Role.OPERATOR)
    assert all(role.allows(role) for role in Role)


def test_revocation_wins_over_expiry_and_expiry_starts_at_its_instant() -> None:
    now = datetime(2030, 1, 1, tzinfo=UTC)
    assert token_status(expires_at=now, revoked_at=None, now=now) is TokenStatus.EXPIRED
    assert token_status(expires_at=now + timedelta(seconds=1), revoked_at=None, now=now) is TokenStatus.ACTIVE
    assert token_status(expires_at=None, revoked_at=None, now=now) is TokenStatus.ACTIVE
    assert token_status(expires_at=now, revoked_at=now, now=now) is TokenStatus.REVOKED


# --- service -----------------------------------------------------------------------------------


def test_created_token_authenticates_with_its_role(services: Services) -> None:
    token = _create(services, "ci", Role.OPERATOR)
    identity = services.tokens.authenticate(token)
    assert (identity.name, identity.role) == ("ci", Role.OPERATOR)


def test_the_secret_is_never_stored(services: Services, tmp_path: Path, db: Database) -> None:
    token = _create(services, "ci", Role.VIEWER)
    _, secret = parse_token(token) or ("", "")
    db.conn.execute("PRAGMA wal_checkpoint(FULL)")
    stored = b"".join(path.read_bytes() for path in tmp_path.glob("control-plane.db*"))
    assert secret.encode() not in stored
    assert hash_secret(secret).encode() in stored


def test_token_expires_after_its_ttl(services: Services, clock: FakeClock) -> None:
    token = _create(services, "short", Role.VIEWER, ttl_days=1)
    clock.advance(24 * 3600 - 1)
    services.tokens.authenticate(token)
    clock.advance(1)
    with pytest.raises(AuthenticationError, match="expired"):
        services.tokens.authenticate(token)


def test_default_ttl_applies_and_a_ttl_over_the_cap_is_refused(services: Services, clock: FakeClock) -> None:
    created = services.tokens.create(ADMIN, CreateTokenRequest(name="d", role=Role.VIEWER))
    assert created.expires_at == clock.now() + timedelta(days=30)
    with pytest.raises(InvalidArgumentError, match="ttl_days"):
        _create(services, "long", Role.VIEWER, ttl_days=91)


def test_revoked_token_fails_at_once(services: Services) -> None:
    token = _create(services, "gone", Role.OPERATOR)
    token_id = services.tokens.authenticate(token).token_id
    info = services.tokens.revoke(ADMIN, token_id)
    assert info.status is TokenStatus.REVOKED
    with pytest.raises(AuthenticationError, match="revoked"):
        services.tokens.authenticate(token)


def test_wrong_secret_and_unknown_id_are_both_just_invalid(services: Services) -> None:
    token = _create(services, "x", Role.VIEWER)
    token_id = services.tokens.authenticate(token).token_id
    for forged in (f"efp_{token_id}_{'0' * 64}", f"efp_{'f' * 16}_{'0' * 64}"):
        with pytest.raises(AuthenticationError, match=r"^invalid token$"):
            services.tokens.authenticate(forged)


def test_revoking_twice_succeeds_and_audits_once(services: Services) -> None:
    token_id = services.tokens.authenticate(_create(services, "twice", Role.VIEWER)).token_id
    services.tokens.revoke(ADMIN, token_id)
    services.tokens.revoke(ADMIN, token_id)
    actions = [entry.action for entry in services.audit.list(PageRequest(limit=50)).items]
    assert actions.count("token.revoked") == 1


def test_revoking_an_unknown_token_is_not_found(services: Services) -> None:
    with pytest.raises(NotFoundError):
        services.tokens.revoke(ADMIN, "0000000000000000")


def test_last_active_admin_token_cannot_be_revoked(services: Services, clock: FakeClock) -> None:
    bootstrap = services.tokens.bootstrap_admin(ttl_days=None, keep=lambda _: None)
    assert bootstrap is not None
    with pytest.raises(ConflictError, match="last active admin"):
        services.tokens.revoke(ADMIN, bootstrap.id)
    second = services.tokens.create(ADMIN, CreateTokenRequest(name="second", role=Role.ADMIN, ttl_days=1))
    services.tokens.revoke(ADMIN, bootstrap.id)  # another active admin token exists
    with pytest.raises(ConflictError):
        services.tokens.revoke(ADMIN, second.id)
    clock.advance(24 * 3600)
    assert services.tokens.get(second.id).status is TokenStatus.EXPIRED
    assert services.tokens.revoke(ADMIN, second.id).status is TokenStatus.REVOKED  # expired: nothing to lose


def test_bootstrap_admin_is_issued_once_and_kept_only_if_persisted(services: Services) -> None:
    def fail(_: str) -> None:
        raise OSError("disk full")

    with pytest.raises(OSError):
        services.tokens.bootstrap_admin(ttl_days=None, keep=fail)
    assert services.tokens.list(PageRequest()).total == 0  # rolled back: next start tries again

    kept: list[str] = []
    first = services.tokens.bootstrap_admin(ttl_days=None, keep=kept.append)
    assert first is not None and kept == [first.token] and first.role is Role.ADMIN
    assert first.expires_at is None
    assert services.tokens.bootstrap_admin(ttl_days=None, keep=kept.append) is None
    assert kept == [first.token]


def test_changes_write_audit_rows_with_actor_target_and_detail(services: Services, clock: FakeClock) -> None:
    created = services.tokens.create(ADMIN, CreateTokenRequest(name="ci", role=Role.OPERATOR, ttl_days=5))
    clock.advance(60)
    services.tokens.revoke(ADMIN, created.id)
    page = services.audit.list(PageRequest(limit=10))
    assert page.total == 2
    revoked, made = page.items  # newest first
    assert (made.action, made.target, made.actor, made.actor_name) == (
        "token.created",
        f"token:{created.id}",
        ADMIN.id,
        ADMIN.name,
    )
    assert made.detail["role"] == "operator" and made.detail["name"] == "ci"
    assert (revoked.action, revoked.at - made.at) == ("token.revoked", timedelta(seconds=60))


def test_refused_change_writes_no_audit_row(services: Services) -> None:
    bootstrap = services.tokens.bootstrap_admin(ttl_days=None, keep=lambda _: None)
    assert bootstrap is not None
    before = services.audit.list(PageRequest()).total
    with pytest.raises(ConflictError):
        services.tokens.revoke(ADMIN, bootstrap.id)
    assert services.audit.list(PageRequest()).total == before


def test_last_used_is_recorded_at_most_once_a_minute(services: Services, clock: FakeClock) -> None:
    token = _create(services, "busy", Role.VIEWER)
    token_id = services.tokens.authenticate(token).token_id
    first_use = services.tokens.get(token_id).last_used_at
    assert first_use == clock.now()
    clock.advance(30)
    services.tokens.authenticate(token)
    assert services.tokens.get(token_id).last_used_at == first_use
    clock.advance(30)
    services.tokens.authenticate(token)
    assert services.tokens.get(token_id).last_used_at == clock.now()


def test_token_list_pages_newest_first_with_total(services: Services, clock: FakeClock) -> None:
    for i in range(5):
        _create(services, f"t{i}", Role.VIEWER)
        clock.advance(1)
    page = services.tokens.list(PageRequest(limit=2, offset=1))
    assert page.total == 5 and [t.name for t in page.items] == ["t3", "t2"]
    assert services.tokens.list(PageRequest(limit=2, offset=10)).items == []
