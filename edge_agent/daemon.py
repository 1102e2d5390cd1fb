"""The agent process: serve installed models, and (when a broker is configured) converge on the
desired state, report, send telemetry home and answer commands.

Offline first: the local API serves whatever is installed before any network is attempted, and
keeps serving when the broker or control plane is down. The broker connection is retried with
backoff for as long as the agent runs; everything that needs it waits for it.

All background loops live in one `TaskGroup`; `stop` (SIGTERM/SIGINT) ends them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from datetime import datetime
from pathlib import Path

import msgspec

from edge_agent.config import AgentConfig
from edge_agent.credentials import mqtt_login, nats_user_auth
from edge_agent.errors import ConfigError, UnsupportedCommandError
from edge_agent.http_api import create_app, serve_http
from edge_agent.lifecycle import Lifecycle
from edge_agent.reconciler import Reconciler, error_report
from edge_agent.serving import ModelServer, ServedModel
from edge_agent.sources import ArtifactSource, HttpArtifactSource, NatsArtifactSource
from edge_agent.store import ModelStore
from edge_agent.telemetry.forwarder import TelemetryForwarder
from edge_agent.telemetry.queue import TelemetryQueue
from edge_agent.telemetry.recorder import TelemetryRecorder
from hardware_profiles.detect import detect
from hardware_profiles.loader import fallback_chain
from hardware_profiles.runtimes import open_session, settings_from_manifest
from protocols import subjects
from protocols.codec import AnyCommand, command_decoder, desired_state_decoder, encode
from protocols.errors import FabricError, ProtocolError
from protocols.messages import (
    CollectDiagnostics,
    CommandReply,
    FlushTelemetry,
    Heartbeat,
    JoinTraining,
    LeaveTraining,
    ModelStatus,
    ReportedState,
    RollbackModel,
    utc_now,
)
from protocols.subjects import StateKey
from protocols.transports.bus import Bus
from protocols.transports.mqtt_bus import MqttBus
from protocols.transports.nats_bus import NatsBus

logger = logging.getLogger(__name__)

AGENT_VERSION = "0.1.0"


def device_profiles(config: AgentConfig) -> list[str]:
    """This device's profile and its fallback chain, most preferred first."""
    if config.profile is not None:
        return [p.name for p in fallback_chain(config.profile)]
    detected = detect()
    if not detected:
        raise ConfigError("profile", "no hardware profile is usable on this host; set one explicitly")
    return [p.name for p in fallback_chain(detected[0].name)]


class AgentStatus(msgspec.Struct, frozen=True, kw_only=True):
    """What `edgefabric-agent status` and `GET /v2/agent/status` show."""

    device_id: str
    profiles: tuple[str, ...]
    mode: str
    is_connected: bool
    last_contact: datetime | None
    observed_revision: int
    queue_depth: int
    queue_evicted: int
    models: tuple[ModelStatus, ...]


class Agent:
    def __init__(self, config: AgentConfig) -> None:
        self.config = config
        self.state_dir = config.state_path
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.profiles = device_profiles(config)
        self.trusted_root = (
            Path(config.trusted_root).expanduser().read_bytes() if config.trusted_root else None
        )
        self.store = ModelStore(self.state_dir)
        self.lifecycle = Lifecycle(self.state_dir / "state.json")
        self.recorder = TelemetryRecorder(interval_s=config.telemetry_interval_s)
        self.queue = TelemetryQueue(self.state_dir / "queue.db", config.queue_max_bytes)
        self.server = ModelServer(
            recorder=self.recorder,
            max_batch_size=config.max_batch_size,
            max_queue_delay_ms=config.max_queue_delay_ms,
            shadow_sample_fraction=config.shadow_sample_fraction,
        )
        self.bus: Bus | None = None
        self.reconciler: Reconciler | None = None
        self.forwarder: TelemetryForwarder | None = None
        self.last_contact: datetime | None = None
        self.http_port: int | None = None
        self._started = time.monotonic()
        self._desired: asyncio.Queue[bytes] = asyncio.Queue(maxsize=1)

    # --- status --------------------------------------------------------------------------------

    def model_statuses(self) -> tuple[ModelStatus, ...]:
        names = sorted(set(self.store.model_names()) | set(self.lifecycle.state.models))
        statuses = []
        for name in names:
            record = self.lifecycle.record(name)
            current, previous = self.store.current(name), self.store.previous(name)
            shadow = self.server.shadow_of(name)
            statuses.append(
                ModelStatus(
                    model=name,
                    state=record.state if record.state != "idle" or current is None else "active",
                    current_version=current.manifest.version if current else None,
                    previous_version=previous.manifest.version if previous else None,
                    target_version=record.target.release.version if record.target else None,
                    shadow_version=shadow.version if shadow else None,
                    last_error=record.last_error,
                )
            )
        return tuple(statuses)

    def status(self) -> AgentStatus:
        stats = self.queue.stats()
        return AgentStatus(
            device_id=self.config.device_id,
            profiles=tuple(self.profiles),
            mode="offline" if self.config.is_offline else ("nats" if self.config.nats_url else "mqtt"),
            is_connected=self.bus is not None and self.bus.is_connected,
            last_contact=self.last_contact,
            observed_revision=self.lifecycle.state.observed_revision,
            queue_depth=stats.depth,
            queue_evicted=sum(stats.evicted.values()),
            models=self.model_statuses(),
        )

    async def report(self) -> None:
        """Write the reported state (no-op while disconnected: the next report carries it all)."""
        (self.state_dir / "status.json").write_bytes(msgspec.json.encode(self.status()))
        if self.bus is None or not self.bus.is_connected:
            return
        reported = ReportedState(
            device_id=self.config.device_id,
            profile=self.profiles[0],
            observed_revision=self.lifecycle.state.observed_revision,
            models=self.model_statuses(),
            agent_version=AGENT_VERSION,
        )
        try:
            await self.bus.put_state(StateKey(self.config.device_id, "reported"), encode(reported))
            self.last_contact = utc_now()
        except FabricError as e:
            logger.info("reporting state failed (will retry): %s", e)

    # --- serving what is installed ---------------------------------------------------------------

    async def serve_installed(self) -> None:
        for name in self.store.model_names():
            installed = self.store.current(name)
            if installed is None:
                continue
            try:
                session = await asyncio.to_thread(
                    open_session,
                    installed.directory / installed.manifest.model_file,
                    settings_from_manifest(installed.manifest, threads=self.config.inference_threads),
                )
            except FabricError as e:
                logger.error("cannot load installed %s %s: %s", name, installed.manifest.version, e)
                continue
            await self.server.activate(ServedModel(name, installed.manifest, session))
            record = self.lifecycle.record(name)
            record.installed_counter = max(record.installed_counter, installed.signed.model_counter)
            logger.info("serving %s %s from disk", name, installed.manifest.version)

    # --- online part -------------------------------------------------------------------------------

    def _make_bus(self) -> tuple[Bus, ArtifactSource]:
        config = self.config
        if config.nats_url:
            nats_bus = NatsBus(
                config.nats_url,
                name=f"agent-{config.device_id}",
                credentials_file=config.nats_credentials,
                token=config.nats_token,
                user_auth=nats_user_auth(config),
                inbox_prefix=subjects.device_inbox_prefix(config.device_id),
            )
            return nats_bus, NatsArtifactSource(nats_bus, self.state_dir / "tuf-mirror")
        assert config.mqtt_url is not None
        if not config.artifact_base_url:
            raise ConfigError("artifact_base_url", "MQTT-only devices download artifacts over HTTP: set it")
        username, password = mqtt_login(config)
        mqtt_bus = MqttBus(
            config.mqtt_url, client_id=f"agent-{config.device_id}", username=username, password=password
        )
        return mqtt_bus, HttpArtifactSource(config.artifact_base_url, config.http_token)

    async def _connect(self, bus: Bus, stop: asyncio.Event) -> None:
        delay = 0.5
        while not stop.is_set():
            try:
                await bus.connect()
                return
            except FabricError as e:
                logger.info("broker not reachable (%s); retrying in %.1f s", e, delay)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), delay)
                delay = min(delay * 2, 30.0)

    async def run_online(self, stop: asyncio.Event) -> None:
        if self.trusted_root is None:
            raise ConfigError(
                "trusted_root", "needed to verify releases (written by enroll, or --trusted-root)"
            )
        trusted_root = self.trusted_root
        bus, source = self._make_bus()
        await self._connect(bus, stop)
        if stop.is_set():
            return
        self.bus = bus
        self.last_contact = utc_now()
        self.reconciler = Reconciler(
            store=self.store,
            lifecycle=self.lifecycle,
            server=self.server,
            source=source,
            trusted_root=trusted_root,
            profiles=self.profiles,
            metadata_cache=self.state_dir / "tuf",
            inference_threads=self.config.inference_threads,
            on_change=self.report,
        )
        self.forwarder = TelemetryForwarder(self.queue, bus, self.config.device_id)
        try:
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(self._watch_desired(stop))
                tasks.create_task(self._apply_desired(stop))
                tasks.create_task(self._heartbeats(stop))
                tasks.create_task(self._commands(stop))
                interval_s = self.config.telemetry_interval_s
                tasks.create_task(self.forwarder.run(self.recorder, stop, interval_s=interval_s))
                await self.reconciler.resume_interrupted()
                await self.report()
                await stop.wait()
                raise _Stopped
        except* _Stopped:
            pass
        finally:
            await bus.close()

    async def _watch_desired(self, stop: asyncio.Event) -> None:
        assert self.bus is not None
        async with await self.bus.watch_state("desired", self.config.device_id) as watch:
            async for update in watch:
                if update.payload is None:
                    continue
                if self._desired.full():  # only the latest desired state matters
                    self._desired.get_nowait()
                self._desired.put_nowait(update.payload)

    async def _apply_desired(self, stop: asyncio.Event) -> None:
        assert self.reconciler is not None
        while not stop.is_set():
            payload = await self._desired.get()
            try:
                desired = desired_state_decoder.decode(payload)
            except ProtocolError as e:
                logger.warning("ignoring desired state: %s", e)
                continue
            if desired.device_id != self.config.device_id:  # e.g. another twin's value redirected here
                logger.warning("ignoring desired state addressed to device %s", desired.device_id)
                continue
            await self.reconciler.apply(desired)

    async def _heartbeats(self, stop: asyncio.Event) -> None:
        assert self.bus is not None
        while not stop.is_set():
            beat = Heartbeat(
                device_id=self.config.device_id,
                uptime_s=time.monotonic() - self._started,
                queue_depth=self.queue.stats().depth,
                active_models={m.name: m.version for m in self.server.served()},
            )
            with contextlib.suppress(FabricError):
                await self.bus.publish(subjects.heartbeat(self.config.device_id), encode(beat))
                self.last_contact = utc_now()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.config.heartbeat_interval_s)

    async def handle_command(self, payload: bytes) -> bytes:
        """Run one command and encode its `CommandReply` (errors are replies, never raised)."""
        try:
            command = command_decoder.decode(payload)
        except ProtocolError as e:
            return encode(
                CommandReply(
                    command_id="", device_id=self.config.device_id, is_ok=False, error=error_report(e)
                )
            )
        try:
            detail = await self._run_command(command)
            reply = CommandReply(
                command_id=command.command_id, device_id=self.config.device_id, is_ok=True, detail=detail
            )
        except FabricError as e:
            reply = CommandReply(
                command_id=command.command_id,
                device_id=self.config.device_id,
                is_ok=False,
                error=error_report(e),
            )
        return encode(reply)

    async def _run_command(self, command: AnyCommand) -> dict[str, str]:
        if isinstance(command, RollbackModel):
            assert self.reconciler is not None
            installed = await self.reconciler.roll_back(command.model)
            return {"model": command.model, "version": installed.manifest.version}
        if isinstance(command, FlushTelemetry):
            assert self.forwarder is not None
            await self.forwarder.collect(self.recorder, force=True)
            result = await self.forwarder.flush()
            return {"sent_records": str(result.sent_records)}
        if isinstance(command, CollectDiagnostics):
            status = msgspec.json.decode(msgspec.json.encode(self.status()))
            return {key: str(value) for key, value in status.items() if key != "models"}
        if isinstance(command, JoinTraining | LeaveTraining):
            raise UnsupportedCommandError(
                command.command_kind, "federated training is not run by this agent yet"
            )
        raise AssertionError(f"unhandled command {command!r}")

    async def _commands(self, stop: asyncio.Event) -> None:
        assert self.bus is not None
        channel = subjects.commands_for(self.config.device_id)
        if isinstance(self.bus, NatsBus):
            async with await self.bus.serve(channel, self.handle_command):
                await stop.wait()
            return
        async with await self.bus.subscribe(channel) as subscription:
            async for delivery in subscription:
                reply = await self.handle_command(delivery.payload)
                with contextlib.suppress(FabricError):
                    await self.bus.publish(subjects.command_replies(self.config.device_id), reply)

    # --- whole process ----------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        await self.serve_installed()
        app = create_app(self.server, status_provider=lambda: msgspec.json.encode(self.status()))
        async with serve_http(app, self.config.http_host, self.config.http_port) as http:
            self.http_port = http.port
            logger.info("local inference API on http://%s:%d", self.config.http_host, http.port)
            await self.report()
            if self.config.is_offline:
                await stop.wait()
            else:
                await self.run_online(stop)
        await self.server.close()
        self.queue.close()


class _Stopped(Exception):
    """Ends the online TaskGroup when the agent is asked to stop."""
