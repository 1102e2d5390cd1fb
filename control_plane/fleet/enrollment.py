"""Enrollment tokens, enrolling a device, and authenticating its REST credential.

Enrollment: the device sends a single-use token, its Ed25519 public key and the token signed by
that key (`EnrollmentRequest`); it gets back its id, where to connect, its REST credential, its
broker credentials and the TUF root it must trust (`EnrollmentReply`).

Invariants:
- Nothing is stored for a refused enrollment: the proof is checked before the database is touched,
  and the token use, the device row, its labels and the audit row commit in one transaction
  (broker credentials, valid `broker_credential_ttl_days`, are minted inside it, so a failure there
  rolls everything back). Without a broker authority (external broker) none are minted.
- A token is spent atomically (`EnrollmentTokenRepository.consume`): with one use left, exactly one
  of any number of concurrent enrollments succeeds; the others are 401s.
- An unknown token and a wrong secret get the same answer; the specific refusal (expired, used,
  revoked) is told only to a caller that holds the right secret.
- A public key enrolls at most one device, ever: a revoked device's key cannot come back.
- A device's profile is a packaged hardware profile (the token's preset, else the device's own):
  releases and rollouts resolve its fallback chain.
- A device credential is refused (401) from the instant its device is revoked.
"""

from __future__ import annotations

import base64
import re
import secrets
from datetime import timedelta
from pathlib import Path

import msgspec
from sqlite_utils import Database

from control_plane.audit.schemas import Actor
from control_plane.audit.services import AuditService
from control_plane.auth.schemas import DeviceIdentity
from control_plane.auth.tokens import DUMMY_HASH, secret_matches
from control_plane.broker_auth.authority import BrokerAuthority
from control_plane.clock import Clock
from control_plane.errors import AuthenticationError, ConflictError, InvalidArgumentError, NotFoundError
from control_plane.fleet.credentials import (
    DEVICE_CREDENTIAL_PREFIX,
    ENROLLMENT_TOKEN_PREFIX,
    decode_public_key,
    issue_secret,
    parse_secret,
    verify_proof,
)
from control_plane.fleet.repositories import DeviceRepository, EnrollmentTokenRepository
from control_plane.fleet.schemas import (
    CreatedEnrollmentToken,
    CreateEnrollmentTokenRequest,
    DeviceRecord,
    EnrollmentTokenInfo,
    EnrollmentTokenPage,
    EnrollmentTokenRecord,
    EnrollmentTokenStatus,
    Labels,
)
from control_plane.pagination import PageRequest
from hardware_profiles.loader import all_profiles
from protocols.messages import EnrollmentReply, EnrollmentRequest

ARTIFACTS_PATH = "/api/v1/tuf"
"""Where the control plane serves TUF metadata and artifact objects to devices over HTTP."""
_ROOT_FILE = re.compile(r"([0-9]+)\.root\.json")


class EnrollmentService:
    def __init__(
        self,
        db: Database,
        audit: AuditService,
        clock: Clock,
        *,
        api_url: str | None,
        nats_url: str | None,
        mqtt_url: str | None,
        trust_dir: Path,
        broker: BrokerAuthority | None,
        broker_credential_ttl_days: int,
    ) -> None:
        self._db = db
        self._tokens = EnrollmentTokenRepository(db)
        self._devices = DeviceRepository(db)
        self._audit = audit
        self._clock = clock
        self._api_url = api_url
        self._nats_url = nats_url
        self._mqtt_url = mqtt_url
        self._trust_dir = trust_dir
        self._broker = broker
        self._broker_credential_ttl = timedelta(days=broker_credential_ttl_days)

    # --- enrollment tokens -----------------------------------------------------------------------

    def create_token(self, actor: Actor, request: CreateEnrollmentTokenRequest) -> CreatedEnrollmentToken:
        if request.profile is not None:
            _require_known_profile(request.profile)
        issued = issue_secret(ENROLLMENT_TOKEN_PREFIX)
        now = self._clock.now()
        record = EnrollmentTokenRecord(
            id=issued.secret_id,
            name=request.name,
            token_hash=issued.secret_hash,
            created_at=now,
            created_by=actor.id,
            expires_at=now + timedelta(hours=request.ttl_hours),
            revoked_at=None,
            max_uses=request.max_uses,
            use_count=0,
            labels=dict(request.labels),
            profile=request.profile,
        )
        with self._db.atomic():
            self._tokens.insert(record)
            self._audit.record(
                actor,
                "enrollment_token.created",
                f"enrollment_token:{record.id}",
                {
                    "name": record.name,
                    "max_uses": record.max_uses,
                    "expires_at": record.expires_at.isoformat(),
                },
            )
        info = self._info(record)
        return CreatedEnrollmentToken(**msgspec.structs.asdict(info), token=issued.presented)

    def list_tokens(self, page: PageRequest) -> EnrollmentTokenPage:
        records, total = self._tokens.page(limit=page.limit, offset=page.offset)
        return EnrollmentTokenPage(
            items=[self._info(record) for record in records],
            total=total,
            limit=page.limit,
            offset=page.offset,
        )

    def get_token(self, token_id: str) -> EnrollmentTokenInfo:
        return self._info(self._require_token(token_id))

    def revoke_token(self, actor: Actor, token_id: str) -> EnrollmentTokenInfo:
        """Revoke an enrollment token (idempotent); devices already enrolled with it stay enrolled."""
        with self._db.atomic():
            record = self._require_token(token_id)
            if record.revoked_at is None:
                self._tokens.set_revoked(token_id, self._clock.now())
                self._audit.record(actor, "enrollment_token.revoked", f"enrollment_token:{token_id}")
        return self.get_token(token_id)

    # --- enrollment --------------------------------------------------------------------------------

    def enroll(self, request: EnrollmentRequest, *, api_url: str) -> EnrollmentReply:
        """Enroll a device (see module invariants); `api_url` is the base URL the request came to,
        used when this service was built without one. Endpoints that are None are not offered."""
        parsed = parse_secret(ENROLLMENT_TOKEN_PREFIX, request.token)
        if parsed is None:
            raise AuthenticationError("malformed enrollment token (expected eft_<id>_<secret>)")
        token_id, secret = parsed
        public_key = decode_public_key(request.public_key)
        verify_proof(public_key, request.token, request.proof)
        requested_labels = _labels(request.labels)
        if request.transport == "mqtt" and self._mqtt_url is None:
            raise InvalidArgumentError(
                "transport", "this control plane has no MQTT listener; enroll over NATS"
            )
        now = self._clock.now()
        api_url = self._api_url or api_url.rstrip("/")
        with self._db.atomic():
            token = self._tokens.get(token_id)
            if not secret_matches(secret, token.token_hash if token else DUMMY_HASH) or token is None:
                raise AuthenticationError("invalid enrollment token")
            status = token.status(now)
            if status is not EnrollmentTokenStatus.ACTIVE:
                raise AuthenticationError(f"enrollment token {status.value}")
            profile = token.profile or _require_known_profile(request.profile)
            encoded_key = base64.b64encode(public_key).decode()
            holder = self._devices.holder_of_key(encoded_key)
            if holder is not None:
                raise ConflictError(
                    f"this public key is already enrolled as device {holder!r}; enroll with a new key"
                )
            device_id = request.device_id or self._new_device_id()
            if self._devices.exists(device_id):
                raise ConflictError(f"device {device_id!r} already exists; choose another id")
            if not self._tokens.consume(token_id, now):
                raise AuthenticationError("enrollment token used")
            credential = issue_secret(DEVICE_CREDENTIAL_PREFIX)
            record = DeviceRecord(
                id=device_id,
                public_key=encoded_key,
                credential_id=credential.secret_id,
                credential_hash=credential.secret_hash,
                profile=profile,
                hostname=request.hostname[:255],
                transport=request.transport,
                agent_version=request.agent_version[:64],
                enrollment_token_id=token_id,
                enrolled_at=now,
            )
            self._devices.insert(record, {**requested_labels, **token.labels})
            broker = (
                None
                if self._broker is None
                else self._broker.device_credentials(
                    device_id, public_key, expires_at=now + self._broker_credential_ttl
                )
            )
            self._audit.record(
                Actor(id=f"device:{device_id}", name=device_id),
                "device.enrolled",
                f"device:{device_id}",
                {"enrollment_token": token_id, "profile": record.profile, "transport": record.transport},
            )
        return EnrollmentReply(
            device_id=device_id,
            nats_url=self._nats_url if request.transport == "nats" else None,
            mqtt_url=self._mqtt_url,
            http_url=api_url,
            broker_credentials="" if broker is None else broker.nats_jwt,
            mqtt_password="" if broker is None else broker.mqtt_jwt,
            rest_token=credential.presented,
            trusted_root=self._trusted_root(),
            artifact_base_url=f"{api_url}{ARTIFACTS_PATH}",
            profile=record.profile,
            labels=self._devices.labels(device_id),
        )

    # --- device credentials ----------------------------------------------------------------------

    def authenticate(self, presented: str) -> DeviceIdentity:
        """The device behind `efd_<id>_<secret>` (`DeviceAuthenticator`); 401 if none or revoked."""
        parsed = parse_secret(DEVICE_CREDENTIAL_PREFIX, presented)
        if parsed is None:
            raise AuthenticationError("malformed device credential (expected efd_<id>_<secret>)")
        credential_id, secret = parsed
        record = self._devices.by_credential(credential_id)
        if not secret_matches(secret, record.credential_hash if record else DUMMY_HASH) or record is None:
            raise AuthenticationError("invalid device credential")
        if record.revoked_at is not None:
            raise AuthenticationError(f"device {record.id} is revoked")
        return DeviceIdentity(device_id=record.id, profile=record.profile)

    # --- helpers -----------------------------------------------------------------------------------

    def _new_device_id(self) -> str:
        while True:  # 48 random bits: a collision is rare, and then only one retry away
            device_id = f"dev-{secrets.token_hex(6)}"
            if not self._devices.exists(device_id):
                return device_id

    def _trusted_root(self) -> str:
        """The newest `N.root.json` of the release signer's repository ("" before there is one)."""
        try:
            versions = [
                (int(match.group(1)), path)
                for path in self._trust_dir.iterdir()
                if (match := _ROOT_FILE.fullmatch(path.name))
            ]
            return max(versions)[1].read_text() if versions else ""
        except FileNotFoundError:
            return ""

    def _require_token(self, token_id: str) -> EnrollmentTokenRecord:
        record = self._tokens.get(token_id)
        if record is None:
            raise NotFoundError("enrollment token", token_id)
        return record

    def _info(self, record: EnrollmentTokenRecord) -> EnrollmentTokenInfo:
        return EnrollmentTokenInfo(
            id=record.id,
            name=record.name,
            status=record.status(self._clock.now()),
            created_at=record.created_at,
            created_by=record.created_by,
            expires_at=record.expires_at,
            revoked_at=record.revoked_at,
            max_uses=record.max_uses,
            use_count=record.use_count,
            labels=record.labels,
            profile=record.profile,
        )


def _require_known_profile(profile: str) -> str:
    """`profile` if it is a packaged hardware profile (releases and rollouts resolve its fallbacks)."""
    known = all_profiles()
    if profile not in known:
        raise InvalidArgumentError(
            "profile", f"unknown hardware profile {profile!r}; known: {', '.join(sorted(known))}"
        )
    return profile


def _labels(labels: dict[str, str]) -> dict[str, str]:
    try:
        return msgspec.convert(labels, Labels)
    except msgspec.ValidationError as e:
        raise InvalidArgumentError("labels", str(e)) from e
