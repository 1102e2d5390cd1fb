"""The Litestar application: `create_app(config, services) -> Litestar`.

Routes: `/api/v1/...` (one router, guarded by roles), `/metrics`, and the OpenAPI schema at
`/schema/openapi.json` (JSON only: no UI that loads scripts from a CDN).

Middleware, outermost first: request metrics; body size limit (413 before anything reads the body);
rate limit per client IP (before authentication, so token guessing is throttled); bearer-token
authentication (401); rate limit per identity. The role guard (403) runs on `/api/v1` routes.

Invariants:
- Every error leaves as `{"error": code, "detail": ...}` (`control_plane.web.errors`); bad input is
  a 4xx, never a 500.
- The app holds no global state: everything it uses comes from `config` and `services`, so tests
  build as many independent apps as they like.
- The app's lifespan owns the broker connection and the background workers: on startup it connects
  `services.bus` (when there is one), provisions JetStream and starts every worker in order; on
  shutdown it stops them in reverse order and closes the connection. Routes that need the broker
  answer 503 when the control plane runs without one.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from typing import Protocol

from litestar import Litestar, Router
from litestar.di import Provide
from litestar.middleware import DefineMiddleware
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import JsonRenderPlugin
from litestar.openapi.spec import Components
from sqlite_utils import Database

from control_plane.audit.controllers import list_audit
from control_plane.audit.services import AuditService
from control_plane.auth.access import SECURITY_SCHEMES, BearerTokenMiddleware, role_guard
from control_plane.auth.controllers import TokenController, who_am_i
from control_plane.auth.services import TokenService
from control_plane.broker_auth.authority import BrokerAuthority
from control_plane.clock import Clock, SystemClock
from control_plane.compile_jobs.controllers import CompileJobController, start_compile
from control_plane.compile_jobs.runner import CompileJobRunner
from control_plane.compile_jobs.services import CompileJobService
from control_plane.config import ControlPlaneConfig, RateLimit
from control_plane.fleet.controllers import DeviceController, EnrollmentTokenController, enroll_device
from control_plane.fleet.enrollment import EnrollmentService
from control_plane.fleet.monitor import DeviceMonitor
from control_plane.fleet.services import DeviceService
from control_plane.fleet.twins import TwinWriter
from control_plane.registry.blobs import BlobStore
from control_plane.registry.controllers import ModelController
from control_plane.registry.services import RegistryService
from control_plane.releases.compiled import CompiledArtifacts
from control_plane.releases.controllers import ReleaseController, TufController
from control_plane.releases.refresher import TimestampRefresher
from control_plane.releases.services import BuiltArtifacts, ReleaseService
from control_plane.releases.signer import ReleaseSigner
from control_plane.rollouts.controllers import RolloutController
from control_plane.rollouts.engine import RolloutEngine
from control_plane.rollouts.services import RolloutService
from control_plane.system.controllers import check_health
from control_plane.system.services import HealthService
from control_plane.telemetry.controllers import TelemetryController
from control_plane.telemetry.ingest import TelemetryIngest
from control_plane.telemetry.services import TelemetryService
from control_plane.web.body_limit import BodySizeLimitMiddleware
from control_plane.web.errors import EXCEPTION_HANDLERS
from control_plane.web.metrics import HttpMetrics, MetricsMiddleware, MetricsSource, serve_metrics
from control_plane.web.options import OptionsMiddleware
from control_plane.web.pagination import page_request
from control_plane.web.query_params import QueryParameterMiddleware
from control_plane.web.rate_limit import KeyKind, RateLimitMiddleware, TokenBucketLimiter
from protocols.transports.nats_bus import NatsBus

API_PREFIX = "/api/v1"


def package_version() -> str:
    try:
        return version("edgefabric")
    except PackageNotFoundError:
        return "unknown"


class BackgroundWorker(Protocol):
    """Work that runs beside the API for the app's lifetime (ingest, compile jobs, state watches)."""

    async def start(self) -> None:
        """Begin working; return once running (long work continues in tasks of its own)."""
        ...

    async def stop(self) -> None:
        """Stop promptly and release everything; safe to call after a failed `start`."""
        ...


@dataclass(frozen=True, kw_only=True)
class Endpoints:
    """Where clients reach this control plane (known once the socket and the broker are up)."""

    api_url: str
    nats_url: str | None = None
    mqtt_url: str | None = None


@dataclass(frozen=True)
class Services:
    """The services behind the routes, built once per process over one database.

    `bus` is the control plane's own broker connection (None: run without a broker, e.g. in API
    tests); it is connected by the app's lifespan, not here. `workers` run beside the API.
    `broker_authority` mints and revokes broker credentials (None: an external `--nats-url`,
    whose own operator manages credentials, or no broker).
    `build(..., artifacts=)` overrides where releases take compiled artifacts from (default: the
    succeeded compile jobs of `compile_jobs`).
    """

    tokens: TokenService
    audit: AuditService
    health: HealthService
    registry: RegistryService
    compile_jobs: CompileJobService
    releases: ReleaseService
    enrollment: EnrollmentService
    devices: DeviceService
    telemetry: TelemetryService
    rollouts: RolloutService
    bus: NatsBus | None = None
    broker_authority: BrokerAuthority | None = None
    workers: tuple[BackgroundWorker, ...] = field(default=())
    metric_sources: tuple[MetricsSource, ...] = field(default=())

    @classmethod
    def build(
        cls,
        config: ControlPlaneConfig,
        db: Database,
        clock: Clock,
        *,
        bus: NatsBus | None = None,
        broker_authority: BrokerAuthority | None = None,
        endpoints: Endpoints | None = None,
        artifacts: BuiltArtifacts | None = None,
    ) -> Services:
        audit = AuditService(db, clock)
        tokens = TokenService(
            db,
            audit,
            clock,
            default_ttl_days=config.default_token_ttl_days,
            max_ttl_days=config.max_token_ttl_days,
        )
        blobs = BlobStore(config.blob_dir)
        registry = RegistryService(db, blobs, audit, clock)
        compile_jobs = CompileJobService(db, registry, blobs, audit, clock, build_dir=config.build_dir)
        releases = ReleaseService(
            db,
            ReleaseSigner.open_or_create(config.tuf_dir, clock.now()),
            audit,
            clock,
            artifacts=artifacts or CompiledArtifacts(compile_jobs),
            bus=bus,
        )
        monitor = DeviceMonitor(db, bus, clock, flush_interval_s=config.device_flush_interval_s)
        twins = TwinWriter(
            bus,
            mqtt_url=endpoints.mqtt_url if endpoints else None,
            broker=broker_authority,
            clock=clock,
            on_reported=monitor.observe_reported,
        )
        enrollment = EnrollmentService(
            db,
            audit,
            clock,
            api_url=endpoints.api_url if endpoints else None,
            nats_url=endpoints.nats_url if endpoints else None,
            mqtt_url=endpoints.mqtt_url if endpoints else None,
            trust_dir=config.tuf_dir / "metadata",
            broker=broker_authority,
            broker_credential_ttl_days=config.device_broker_credential_ttl_days,
        )
        devices = DeviceService(
            db,
            audit,
            clock,
            twins=twins,
            bus=bus,
            broker=broker_authority,
            online_window_s=config.heartbeat_interval_s * config.offline_after_missed_heartbeats,
        )
        telemetry = TelemetryService(db, clock, references=releases.reference_histogram)
        rollouts = RolloutService(db, audit, clock, releases=releases, devices=devices, bus=bus)
        engine = (
            None
            if bus is None
            else RolloutEngine(
                db,
                rollouts,
                devices=devices,
                telemetry=telemetry,
                bus=bus,
                clock=clock,
                tick_interval_s=config.rollout_tick_interval_s,
                writes_per_tick=config.rollout_writes_per_tick,
            )
        )
        ingest = None if bus is None else TelemetryIngest(bus, config.database_path)
        return cls(
            tokens=tokens,
            audit=audit,
            health=HealthService(db, version=package_version()),
            registry=registry,
            compile_jobs=compile_jobs,
            releases=releases,
            enrollment=enrollment,
            devices=devices,
            telemetry=telemetry,
            rollouts=rollouts,
            bus=bus,
            broker_authority=broker_authority,
            workers=(
                monitor,
                twins,
                TimestampRefresher(releases, check_interval_s=config.timestamp_check_interval_s),
                CompileJobRunner(compile_jobs, timeout_s=config.compile_timeout_s),
                *(() if ingest is None else (ingest,)),
                *(() if engine is None else (engine,)),
            ),
            metric_sources=(devices, *(() if ingest is None else (ingest.metrics,))),
        )

    @contextlib.asynccontextmanager
    async def lifespan(self, _app: Litestar) -> AsyncIterator[None]:
        """Connect the bus (and provision JetStream), start the workers; undo both on the way out."""
        async with contextlib.AsyncExitStack() as stack:
            if self.bus is not None:
                await self.bus.connect()
                stack.push_async_callback(self.bus.close)
                await self.bus.provision()
            for worker in self.workers:
                stack.push_async_callback(worker.stop)
                await worker.start()
            yield


def create_app(config: ControlPlaneConfig, services: Services, *, clock: Clock | None = None) -> Litestar:
    """The API over `services`; `clock` drives the rate limiters (default: the system clock)."""
    monotonic = (clock or SystemClock()).monotonic
    metrics = HttpMetrics(sources=services.metric_sources)

    def rate_limit(key_kind: KeyKind, limit: RateLimit) -> DefineMiddleware:
        return DefineMiddleware(
            RateLimitMiddleware,
            key_kind=key_kind,
            limiter=TokenBucketLimiter(limit, monotonic),
            sensitive_limiter=TokenBucketLimiter(config.rate_limit_sensitive, monotonic),
            sensitive_paths=config.sensitive_paths,
        )

    api = Router(
        path=API_PREFIX,
        route_handlers=[
            check_health,
            who_am_i,
            TokenController,
            list_audit,
            ModelController,
            start_compile,
            CompileJobController,
            ReleaseController,
            TufController,
            EnrollmentTokenController,
            enroll_device,
            DeviceController,
            TelemetryController,
            RolloutController,
        ],
        guards=[role_guard],
    )
    return Litestar(
        route_handlers=[api, serve_metrics],
        dependencies={
            "tokens": Provide(lambda: services.tokens, sync_to_thread=False),
            "audit": Provide(lambda: services.audit, sync_to_thread=False),
            "health": Provide(lambda: services.health, sync_to_thread=False),
            "registry": Provide(lambda: services.registry, sync_to_thread=False),
            "compile_jobs": Provide(lambda: services.compile_jobs, sync_to_thread=False),
            "releases": Provide(lambda: services.releases, sync_to_thread=False),
            "enrollment": Provide(lambda: services.enrollment, sync_to_thread=False),
            "devices": Provide(lambda: services.devices, sync_to_thread=False),
            "telemetry": Provide(lambda: services.telemetry, sync_to_thread=False),
            "rollouts": Provide(lambda: services.rollouts, sync_to_thread=False),
            "metrics": Provide(lambda: metrics, sync_to_thread=False),
            "page": Provide(page_request, sync_to_thread=False),
        },
        middleware=[
            DefineMiddleware(MetricsMiddleware, metrics=metrics),
            DefineMiddleware(
                BodySizeLimitMiddleware,
                max_body_bytes=config.max_body_bytes,
                max_upload_bytes=config.max_upload_bytes,
            ),
            rate_limit("ip", config.rate_limit_per_ip),
            DefineMiddleware(
                BearerTokenMiddleware,
                tokens=services.tokens,
                devices=services.enrollment,
                exclude=["^/schema"],
            ),
            rate_limit("identity", config.rate_limit_per_identity),
            OptionsMiddleware,
            QueryParameterMiddleware,
        ],
        exception_handlers=EXCEPTION_HANDLERS,
        lifespan=[services.lifespan],
        openapi_config=OpenAPIConfig(
            title="EdgeFabric control plane",
            version=package_version(),
            path="/schema",
            render_plugins=[JsonRenderPlugin()],
            components=Components(security_schemes=SECURITY_SCHEMES),
        ),
        request_max_body_size=max(config.max_body_bytes, config.max_upload_bytes),  # see body_limit
        logging_config=None,  # the CLI configures logging once; the app must not reconfigure it
        debug=False,
    )
