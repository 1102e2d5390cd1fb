"""`BrokerAuthority`: the control plane's NATS operator, its accounts, and every credential they mint.

Trust chain (nats-server operator mode, full account resolver): the operator key signs the
`fabric` account (JetStream on, explicit limits) and the `system` account; the fabric account key
signs the user JWTs of the control plane's own service user and of every device.

Files under `<data_dir>/broker-auth/` (directory 0700, files 0600; see `FILES`):
`operator.nk`, `account.nk`, `system.nk`, `service.nk` (nkey seeds), `operator.jwt`, and
`revocations.json` (device user key -> unix seconds).

Device credentials (`device_credentials`, called by enrollment and renewal):
- the device's NATS user key is its own Ed25519 public key (`U` + the 32 raw bytes), so the JWT is
  useless without the device's private key, which signs the server's nonce at every connect;
- the NATS JWT allows only `STANDARD` connections, the MQTT JWT only `MQTT` ones; the MQTT JWT is a
  bearer token (MQTT cannot sign a nonce), so possession of it is the credential: keep it short;
- both carry the device's permissions (`permissions.py`) and `exp`: the server refuses an expired
  JWT and closes a live connection when its JWT expires.

Revocation (`revoke`): the device key is added to the account's revocation list with a time, the
list is persisted first, then the re-signed account JWT is pushed to the server on
`$SYS.REQ.CLAIMS.UPDATE` by a short-lived system-account user. The server closes that key's
connections at once and refuses its JWTs issued at or before that time (both transports: the two
JWTs share the key). A restart keeps it: `server_config` preloads the account JWT with the
persisted list.

Invariants:
- Keys are created once per data dir and never rewritten; a half-created set (a crash between two
  files) is completed on the next start, never replaced.
- The account JWT the server holds is always `account_jwt()` of the persisted revocation list.
- With an external `--nats-url` there is no authority: that server's operator manages credentials.
"""

from __future__ import annotations

import asyncio
import os
import time
from datetime import UTC, datetime
from pathlib import Path

import msgspec

from control_plane.broker_auth.claims import (
    Account,
    AccountLimits,
    Claims,
    Operator,
    User,
    encode_jwt,
)
from control_plane.broker_auth.nkey import KeyPair, NkeyError, Role, public_nkey
from control_plane.broker_auth.permissions import device_mqtt_permissions, device_nats_permissions
from control_plane.errors import DataDirError, InvalidArgumentError, UnavailableError
from protocols import subjects
from protocols.durable import write_atomic
from protocols.errors import BusError
from protocols.identifiers import DeviceId, UtcDatetime, validate_device_id
from protocols.subjects import Channel
from protocols.transports.nats_bus import NatsBus, UserJwtAuth

ACCOUNT_NAME = "fabric"
SYSTEM_ACCOUNT_NAME = "SYS"
FILES = {
    "operator": ("operator.nk", Role.OPERATOR),
    "account": ("account.nk", Role.ACCOUNT),
    "system": ("system.nk", Role.ACCOUNT),
    "service": ("service.nk", Role.USER),
}
REVOCATIONS_FILE = "revocations.json"
OPERATOR_JWT_FILE = "operator.jwt"
CLAIMS_UPDATE = Channel(nats="$SYS.REQ.CLAIMS.UPDATE", mqtt="$SYS/REQ/CLAIMS/UPDATE")
"""nats-server's full resolver takes account JWT updates here, from the system account only."""
SYSTEM_USER_TTL_S = 60
FABRIC_LIMITS = AccountLimits(mem_storage=-1, disk_storage=-1, streams=-1, consumer=-1)
SYSTEM_LIMITS = AccountLimits()


class DeviceBrokerCredentials(msgspec.Struct, frozen=True, kw_only=True):
    """What a device needs to reach the broker as itself (handed over at enrollment or renewal)."""

    device_id: DeviceId
    user_nkey: str
    """The device's NATS user key (`U...`, its Ed25519 public key): what revocation names."""
    nats_jwt: str
    """User JWT for NATS connections; the device signs the server nonce with its own key."""
    mqtt_jwt: str
    """Bearer user JWT: the MQTT password (any username)."""
    inbox_prefix: str
    """The only inbox prefix the device may subscribe under (`_INBOX_<id>`)."""
    expires_at: UtcDatetime


class _Revocations(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    users: dict[str, int] = {}
    """User public nkey -> unix seconds."""


class _ClaimsUpdateReply(msgspec.Struct, frozen=True):
    data: dict[str, object] | None = None
    error: dict[str, object] | None = None


class BrokerAuthority:
    """The operator of the embedded broker (see the module docstring)."""

    def __init__(self, directory: Path, keys: dict[str, KeyPair], revocations: dict[str, int]) -> None:
        self.directory = directory
        self._operator = keys["operator"]
        self._account = keys["account"]
        self._system = keys["system"]
        self._service = keys["service"]
        self._revocations = dict(revocations)
        self._push_lock = asyncio.Lock()
        self._last_account_iat_s = 0

    @classmethod
    def load_or_create(cls, directory: Path) -> BrokerAuthority:
        """Read the keys and the revocation list from `directory`, creating what is missing."""
        try:
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            os.chmod(directory, 0o700)
            keys = {name: _load_or_create_key(directory / file, role) for name, (file, role) in FILES.items()}
            revocations_path = directory / REVOCATIONS_FILE
            revocations = (
                msgspec.json.decode(revocations_path.read_bytes(), type=_Revocations).users
                if revocations_path.exists()
                else {}
            )
        except OSError as e:
            raise DataDirError(directory, e.strerror or str(e)) from e
        except (NkeyError, msgspec.DecodeError) as e:
            raise DataDirError(directory, f"unreadable broker credentials: {e}") from e
        authority = cls(directory, keys, revocations)
        write_atomic(directory / OPERATOR_JWT_FILE, authority.operator_jwt().encode(), mode=0o600)
        return authority

    # --- the trust chain ---------------------------------------------------------------------------

    @property
    def account_public_key(self) -> str:
        return self._account.public_key

    def operator_jwt(self) -> str:
        claims = Claims(
            sub=self._operator.public_key,
            name="edgefabric",
            nats=Operator(system_account=self._system.public_key),
        )
        return encode_jwt(claims, self._operator)

    def account_jwt(self) -> str:
        """The fabric account, with the current revocation list; each call is newer than the last."""
        issued_at_s = max(int(time.time()), self._last_account_iat_s + 1)
        self._last_account_iat_s = issued_at_s
        claims = Claims(
            sub=self._account.public_key,
            name=ACCOUNT_NAME,
            nats=Account(limits=FABRIC_LIMITS, revocations=dict(self._revocations)),
        )
        return encode_jwt(claims, self._operator, issued_at_s=issued_at_s)

    def system_account_jwt(self) -> str:
        claims = Claims(
            sub=self._system.public_key, name=SYSTEM_ACCOUNT_NAME, nats=Account(limits=SYSTEM_LIMITS)
        )
        return encode_jwt(claims, self._operator)

    def server_config(self, resolver_dir: Path) -> str:
        """The nats-server configuration fragment that turns on operator mode with these keys."""
        resolver_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        return (
            f'operator: "{self.directory / OPERATOR_JWT_FILE}"\n'
            f'system_account: "{self._system.public_key}"\n'
            f'resolver: {{ type: full, dir: "{resolver_dir}", allow_delete: false, interval: "2m" }}\n'
            "resolver_preload: {\n"
            f'  {self._account.public_key}: "{self.account_jwt()}"\n'
            f'  {self._system.public_key}: "{self.system_account_jwt()}"\n'
            "}\n"
        )

    # --- credentials -------------------------------------------------------------------------------

    def service_credentials(self) -> UserJwtAuth:
        """The control plane's own user in the fabric account: every subject, no expiry."""
        claims = Claims(sub=self._service.public_key, name="edgefabric-control-plane", nats=User())
        token = encode_jwt(claims, self._account)
        return UserJwtAuth(jwt=lambda: token, sign=self._service.sign)

    def service_mqtt_password(self, *, expires_at: datetime) -> str:
        """A bearer JWT for the control plane's own MQTT connections (retained desired state)."""
        claims = Claims(
            sub=self._service.public_key,
            name="edgefabric-control-plane-mqtt",
            exp=_unix_s(expires_at),
            nats=User(bearer_token=True, allowed_connection_types=("MQTT",)),
        )
        return encode_jwt(claims, self._account)

    def device_credentials(
        self, device_id: str, public_key: bytes, *, expires_at: datetime
    ) -> DeviceBrokerCredentials:
        """NATS and MQTT JWTs for the device whose Ed25519 public key is `public_key` (32 raw bytes)."""
        validate_device_id(device_id)
        user_nkey = _user_nkey(public_key)
        exp = _unix_s(expires_at)
        publish, subscribe, responses = device_nats_permissions(device_id)
        nats_claims = Claims(
            sub=user_nkey,
            name=device_id,
            exp=exp,
            nats=User(pub=publish, sub=subscribe, resp=responses, allowed_connection_types=("STANDARD",)),
        )
        mqtt_publish, mqtt_subscribe = device_mqtt_permissions(device_id)
        mqtt_claims = Claims(
            sub=user_nkey,
            name=device_id,
            exp=exp,
            nats=User(
                pub=mqtt_publish,
                sub=mqtt_subscribe,
                bearer_token=True,
                allowed_connection_types=("MQTT",),
            ),
        )
        return DeviceBrokerCredentials(
            device_id=device_id,
            user_nkey=user_nkey,
            nats_jwt=encode_jwt(nats_claims, self._account),
            mqtt_jwt=encode_jwt(mqtt_claims, self._account),
            inbox_prefix=subjects.device_inbox_prefix(device_id),
            expires_at=datetime.fromtimestamp(exp, UTC),
        )

    def is_revoked(self, public_key: bytes) -> bool:
        return _user_nkey(public_key) in self._revocations

    # --- revocation ------------------------------------------------------------------------------

    async def revoke(self, bus: NatsBus, public_key: bytes, at: datetime) -> None:
        """Refuse the device key's JWTs issued at or before `at` and close its connections now.

        `bus` is the control plane's connection; the push goes to the same server through a
        short-lived system-account user. The revocation is persisted before the push, so a push
        that fails (`UnavailableError`, retrying helps) still takes effect on the next broker start.
        """
        user_nkey = _user_nkey(public_key)
        at_s = _unix_s(at)
        async with self._push_lock:
            self._revocations[user_nkey] = max(at_s, self._revocations.get(user_nkey, 0))
            write_atomic(
                self.directory / REVOCATIONS_FILE,
                msgspec.json.encode(_Revocations(users=self._revocations)),
                mode=0o600,
            )
            await self._push_account_jwt(bus.url)

    async def _push_account_jwt(self, nats_url: str) -> None:
        system_user = KeyPair.generate(Role.USER)
        claims = Claims(
            sub=system_user.public_key,
            name="edgefabric-claims-update",
            exp=int(time.time()) + SYSTEM_USER_TTL_S,
            nats=User(allowed_connection_types=("STANDARD",)),
        )
        token = encode_jwt(claims, self._system)
        system_bus = NatsBus(
            nats_url,
            name="edgefabric-claims-update",
            user_auth=UserJwtAuth(jwt=lambda: token, sign=system_user.sign),
        )
        try:
            async with system_bus:
                reply = await system_bus.request(CLAIMS_UPDATE, self.account_jwt().encode())
        except BusError as e:
            raise UnavailableError("broker", f"pushing the account's revocations failed: {e}") from e
        decoded = msgspec.json.decode(reply, type=_ClaimsUpdateReply)
        if decoded.error is not None:
            raise UnavailableError("broker", f"the broker refused the account update: {decoded.error}")


def _user_nkey(public_key: bytes) -> str:
    try:
        return public_nkey(Role.USER, public_key)
    except NkeyError as e:
        raise InvalidArgumentError("public_key", e.reason) from e


def _unix_s(moment: datetime) -> int:
    if moment.tzinfo is None:
        raise InvalidArgumentError("time", f"{moment.isoformat()} has no timezone")
    return int(moment.timestamp())


def _load_or_create_key(path: Path, role: Role) -> KeyPair:
    if path.exists():
        pair = KeyPair.from_seed(path.read_text().strip())
        if pair.role != role:
            raise NkeyError(f"{path.name} holds a {pair.role.name.lower()} key, not {role.name.lower()}")
        return pair
    pair = KeyPair.generate(role)
    write_atomic(path, f"{pair.seed}\n".encode(), mode=0o600)
    return pair
