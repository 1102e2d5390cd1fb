"""`edgefabric-agent`: the device command line.

Configuration is loaded once here (defaults < TOML < `EDGEFABRIC_AGENT_*` < flags) and passed
down; each subcommand is a small handler. Logs are JSON lines on stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import socket
import sys
import time
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Literal

import msgspec
import numpy as np

from edge_agent.config import AgentConfig, default_config_path, load_config, write_config
from edge_agent.errors import ConfigError, InvalidInferenceInputError, ModelNotServedError
from edge_agent.lifecycle import Lifecycle
from edge_agent.store import ModelStore
from edge_agent.telemetry.queue import TelemetryQueue
from hardware_profiles.detect import explain
from hardware_profiles.report import render_table as render_profiles
from protocols.cli_support import EXIT_FAILED, EXIT_OK, OneLineArgumentParser, render_table, run_cli


def _version() -> str:
    try:
        return version("edgefabric")
    except PackageNotFoundError:
        return "unknown"


class _JsonLogFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def _configure_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_JsonLogFormatter())
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)


def _config(args: argparse.Namespace) -> AgentConfig:
    path = Path(args.config) if getattr(args, "config", None) else default_config_path()
    overrides = {key: getattr(args, key, None) for key in AgentConfig.__struct_fields__}
    return load_config(path if path.exists() or getattr(args, "config", None) else None, overrides=overrides)


# --- run -------------------------------------------------------------------------------------------


def _run(args: argparse.Namespace) -> int:
    from edge_agent.daemon import Agent

    config = _config(args)
    _configure_logging(args.log_level)
    agent = Agent(config)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        await agent.run(stop)

    asyncio.run(main())
    return EXIT_OK


# --- status ----------------------------------------------------------------------------------------


def _status(args: argparse.Namespace) -> int:
    config = _config(args)
    state_dir = config.state_path
    store = ModelStore(state_dir)
    lifecycle = Lifecycle(state_dir / "state.json")
    with TelemetryQueue(state_dir / "queue.db", config.queue_max_bytes) as queue:
        stats = queue.stats()
    live: dict[str, Any] = {}
    if (state_dir / "status.json").exists():
        live = msgspec.json.decode((state_dir / "status.json").read_bytes())
    models = []
    for name in sorted(set(store.model_names()) | set(lifecycle.state.models)):
        record = lifecycle.record(name)
        current, previous = store.current(name), store.previous(name)
        models.append(
            {
                "model": name,
                "state": record.state if record.state != "idle" or current is None else "active",
                "current": current.manifest.version if current else None,
                "current_profile": current.manifest.hw_profile if current else None,
                "previous": previous.manifest.version if previous else None,
                "target": record.target.release.version if record.target else None,
                "last_error": record.last_error.message if record.last_error else None,
            }
        )
    report = {
        "device_id": config.device_id,
        "state_dir": str(state_dir),
        "observed_revision": lifecycle.state.observed_revision,
        "queue_depth": stats.depth,
        "queue_evicted": sum(stats.evicted.values()),
        "last_contact": live.get("last_contact"),
        "models": models,
    }
    if args.json:
        print(json.dumps(report))
        return EXIT_OK
    print(
        f"device {report['device_id']}  state dir {state_dir}  desired revision {report['observed_revision']}"
    )
    print(
        f"telemetry queue: {stats.depth} records, {report['queue_evicted']} evicted; "
        f"last contact: {report['last_contact'] or 'never'}"
    )
    headers = ["MODEL", "STATE", "CURRENT", "PROFILE", "PREVIOUS", "TARGET", "LAST ERROR"]
    rows = [
        [
            m["model"],
            m["state"],
            m["current"],
            m["current_profile"],
            m["previous"],
            m["target"],
            m["last_error"],
        ]
        for m in models
    ]
    print(render_table(headers, rows) if rows else "no models installed")
    return EXIT_OK


# --- predict ---------------------------------------------------------------------------------------


def _read_input(path: Path, input_names: list[str]) -> dict[str, Any]:
    if path.suffix == ".npy":
        if len(input_names) != 1:
            raise InvalidInferenceInputError(
                "predict", f".npy gives one array, the model takes {input_names}"
            )
        return {input_names[0]: np.load(path, allow_pickle=False)}
    if path.suffix == ".json":
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise InvalidInferenceInputError("predict", f"{path.name}: {e}") from e
        if isinstance(data, dict) and "inputs" in data:  # an OIP v2 request body
            return {i["name"]: np.asarray(i["data"]).reshape(i["shape"]) for i in data["inputs"]}
        if isinstance(data, dict):
            return data
        if len(input_names) == 1:
            return {input_names[0]: data}
    raise InvalidInferenceInputError("predict", f"{path.name}: use .npy or .json")


def _predict(args: argparse.Namespace) -> int:
    from edge_agent.serving import ModelServer, ServedModel
    from hardware_profiles.runtimes import open_session, settings_from_manifest

    config = _config(args)
    store = ModelStore(config.state_path)
    installed = store.current(args.model)
    if installed is None:
        raise ModelNotServedError(args.model, store.model_names())
    session = open_session(
        installed.directory / installed.manifest.model_file, settings_from_manifest(installed.manifest)
    )
    served = ServedModel(args.model, installed.manifest, session)
    feeds = _read_input(Path(args.input), [spec.name for spec in session.inputs])

    async def infer() -> dict[str, Any]:
        server = ModelServer(max_batch_size=1)
        await server.activate(served)
        try:
            _, outputs = await server.infer(args.model, feeds)
        finally:
            await server.close()
        return outputs

    started = time.perf_counter()
    outputs = asyncio.run(infer())
    elapsed_ms = (time.perf_counter() - started) * 1000
    if args.json:
        print(
            json.dumps(
                {
                    "model": args.model,
                    "version": served.version,
                    "outputs": {k: np.asarray(v).tolist() for k, v in outputs.items()},
                }
            )
        )
        return EXIT_OK
    print(f"{args.model} {served.version} ({installed.manifest.hw_profile}, {elapsed_ms:.1f} ms)")
    for name, value in outputs.items():
        array = np.asarray(value)
        top1 = (
            f"  top-1 per sample: {array.reshape(len(array), -1).argmax(axis=1).tolist()}"
            if array.ndim >= 2
            else ""
        )
        print(f"{name} {list(array.shape)}{top1}")
    return EXIT_OK


# --- load (offline bundle) -------------------------------------------------------------------------


def _load(args: argparse.Namespace) -> int:
    from edge_agent.daemon import device_profiles
    from edge_agent.reconciler import Reconciler
    from edge_agent.serving import ModelServer
    from edge_agent.sources import BundleSource
    from model_compiler.signing.release import bundle_index_decoder
    from protocols.messages import ModelAssignment, ReleaseRef

    config = _config(args)
    root_path = args.trusted_root or config.trusted_root
    if not root_path:
        raise ConfigError(
            "trusted_root", "load needs the device's trusted root (never the bundle's): --trusted-root"
        )
    bundle = Path(args.bundle)
    try:
        index = bundle_index_decoder.decode((bundle / "bundle.json").read_bytes())
    except OSError as e:
        raise ConfigError("BUNDLE_DIR", f"{bundle}: no bundle.json ({e.strerror})") from e
    state_dir = config.state_path
    lifecycle = Lifecycle(state_dir / "state.json")
    store = ModelStore(state_dir)
    reconciler = Reconciler(
        store=store,
        lifecycle=lifecycle,
        server=ModelServer(max_batch_size=1),
        source=BundleSource(bundle),
        trusted_root=Path(root_path).expanduser().read_bytes(),
        profiles=device_profiles(config),
        metadata_cache=state_dir / "tuf",
    )
    assignment = ModelAssignment(
        model=index.model, release=ReleaseRef(model=index.model, version=index.version, model_counter=1)
    )

    async def install() -> None:
        await reconciler.install(assignment)
        await reconciler.server.close()

    asyncio.run(install())
    record = lifecycle.record(index.model)
    current = store.current(index.model)
    if current is None or current.manifest.version != index.version:
        reason = record.last_error.message if record.last_error else "not installed"
        print(f"edgefabric-agent: {index.model} {index.version} refused: {reason}", file=sys.stderr)
        return EXIT_FAILED
    print(
        f"installed {index.model} {index.version} ({current.manifest.hw_profile}) from {bundle}; "
        "restart a running agent to serve it"
    )
    return EXIT_OK


# --- install (systemd) -----------------------------------------------------------------------------

_UNIT = """[Unit]
Description=EdgeFabric edge agent
After=network-online.target
Wants=network-online.target

[Service]
ExecStart={executable} run --config {config}
Restart=always
RestartSec=5

[Install]
WantedBy={wanted_by}
"""


def _install(args: argparse.Namespace) -> int:
    from protocols.durable import write_atomic

    config = _config(args)
    is_user = args.user
    config_path = (
        Path(args.config_out)
        if args.config_out
        else (
            Path.home() / ".config/edgefabric/agent.toml" if is_user else Path("/etc/edgefabric/agent.toml")
        )
    )
    unit_dir = (
        Path(args.unit_dir)
        if args.unit_dir
        else (Path.home() / ".config/systemd/user" if is_user else Path("/etc/systemd/system"))
    )
    executable = (
        Path(sys.argv[0]).resolve()
        if Path(sys.argv[0]).name == "edgefabric-agent"
        else (Path(sys.executable).parent / "edgefabric-agent")
    )
    write_config(config, config_path)
    unit = _UNIT.format(
        executable=executable,
        config=config_path,
        wanted_by="default.target" if is_user else "multi-user.target",
    )
    unit_path = unit_dir / "edgefabric-agent.service"
    write_atomic(unit_path, unit.encode())
    scope = "--user " if is_user else ""
    print(f"wrote {config_path}")
    print(f"wrote {unit_path}")
    print(f"start it with: systemctl {scope}daemon-reload && systemctl {scope}enable --now edgefabric-agent")
    return EXIT_OK


# --- enroll ----------------------------------------------------------------------------------------


def _enroll(args: argparse.Namespace) -> int:
    from edge_agent.enrollment import (
        credentials_dir,
        discover_api_url,
        enrollment_request,
        load_or_create_device_key,
        post_enrollment,
        write_enrollment,
    )

    config_path = Path(args.config) if args.config else default_config_path()
    overrides = {key: getattr(args, key, None) for key in AgentConfig.__struct_fields__}
    base = load_config(config_path if config_path.exists() else None, overrides=overrides)
    labels = {}
    for pair in args.label or ():
        key, is_pair, value = pair.partition("=")
        if not is_pair or not key:
            raise ConfigError("--label", f"expected KEY=VALUE, got {pair!r}")
        labels[key] = value
    profile = base.profile or _best_profile()
    api_url = args.url or discover_api_url(
        timeout_s=args.discover_timeout, interfaces=[args.mdns_interface] if args.mdns_interface else None
    )
    transport: Literal["nats", "mqtt"] = "mqtt" if args.mqtt else "nats"
    request = enrollment_request(
        args.token,
        load_or_create_device_key(base.state_path),
        profile=profile,
        hostname=socket.gethostname(),
        labels=labels,
        agent_version=_version(),
        device_id=args.device_id,
        transport=transport,
    )
    reply = post_enrollment(api_url, request)
    config = write_enrollment(reply, base=base, transport=transport, config_path=config_path)
    if args.json:
        summary = {
            "device_id": config.device_id,
            "api_url": reply.http_url or api_url,
            "transport": transport,
            "broker_url": config.nats_url or config.mqtt_url,
            "profile": config.profile,
            "labels": reply.labels,
            "config": str(config_path),
            "credentials": str(credentials_dir(config.state_path)),
        }
        print(json.dumps(summary))
    else:
        print(f"enrolled as device {config.device_id} ({config.profile}, {transport}) at {api_url}")
        print(f"wrote {config_path} and {credentials_dir(config.state_path)}/")
        print(f"start it with: edgefabric-agent run --config {config_path}")
    if config.trusted_root is None:
        print(
            "edgefabric-agent: note: the control plane sent no TUF root yet; `run` needs --trusted-root",
            file=sys.stderr,
        )
    return EXIT_OK


def _best_profile() -> str:
    detection = explain()
    if not detection.usable:
        raise ConfigError("profile", "no hardware profile is usable on this host; pass --profile")
    return detection.usable[0].name


# --- profiles --------------------------------------------------------------------------------------


def _profiles(args: argparse.Namespace) -> int:
    detection = explain()
    if args.json:
        sys.stdout.write(msgspec.json.encode(detection, order="deterministic").decode() + "\n")
    else:
        print(render_profiles(detection.usable))
        for rejected in detection.rejected if args.all else ():
            print(f"  not usable: {rejected.name}: {'; '.join(rejected.reasons)}")
        for problem in detection.facts.probe_errors:
            print(f"  probe problem: {problem}", file=sys.stderr)
    return EXIT_OK if detection.usable else EXIT_FAILED


# --- parser ----------------------------------------------------------------------------------------


def _config_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", metavar="F", help=f"TOML config (default {default_config_path()} if present)"
    )
    parser.add_argument("--state-dir", dest="state_dir", metavar="D")
    parser.add_argument("--device-id", dest="device_id")
    parser.add_argument("--profile", help="hardware profile (default: the best one detected)")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineArgumentParser(
        prog="edgefabric-agent",
        description="EdgeFabric edge agent: verifies, installs and serves models on this device.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    run = commands.add_parser("run", help="the daemon: serve models locally, converge on the desired state")
    _config_flags(run)
    run.add_argument("--http-port", dest="http_port", type=int)
    run.add_argument("--http-host", dest="http_host")
    run.add_argument("--nats-url", dest="nats_url")
    run.add_argument("--mqtt-url", dest="mqtt_url")
    run.add_argument("--artifact-base-url", dest="artifact_base_url")
    run.add_argument("--trusted-root", dest="trusted_root", metavar="root.json")
    run.add_argument("--telemetry-interval", dest="telemetry_interval_s", type=float, metavar="S")
    run.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    run.set_defaults(handler=_run)

    status = commands.add_parser("status", help="models, lifecycle state, telemetry queue, last contact")
    _config_flags(status)
    status.add_argument("--json", action="store_true")
    status.set_defaults(handler=_status)

    predict = commands.add_parser("predict", help="run the installed model locally (no network needed)")
    _config_flags(predict)
    predict.add_argument("model")
    predict.add_argument("--input", required=True, metavar="FILE", help=".npy (one input) or .json")
    predict.add_argument("--json", action="store_true")
    predict.set_defaults(handler=_predict)

    load = commands.add_parser("load", help="install a release from an offline bundle (same checks)")
    _config_flags(load)
    load.add_argument("bundle", metavar="BUNDLE_DIR")
    load.add_argument("--trusted-root", metavar="root.json", help="the device's root (default: from config)")
    load.set_defaults(handler=_load)

    install = commands.add_parser("install", help="write the config file and a systemd unit")
    _config_flags(install)
    install.add_argument("--user", action="store_true", help="a user unit instead of a system one")
    install.add_argument("--nats-url", dest="nats_url")
    install.add_argument("--mqtt-url", dest="mqtt_url")
    install.add_argument("--trusted-root", dest="trusted_root")
    install.add_argument("--config-out", metavar="F", help="where to write the config")
    install.add_argument("--unit-dir", metavar="D", help="where to write the unit")
    install.set_defaults(handler=_install)

    enroll = commands.add_parser(
        "enroll", help="join a control plane with an enrollment token: writes the config and credentials"
    )
    _config_flags(enroll)
    where = enroll.add_mutually_exclusive_group(required=True)
    where.add_argument("--url", help="the control plane's API URL")
    where.add_argument("--discover", action="store_true", help="find the control plane over mDNS")
    enroll.add_argument("--token", required=True, help="enrollment token eft_... (edgefabric devices token)")
    enroll.add_argument("--mqtt", action="store_true", help="enroll as an MQTT-only device")
    enroll.add_argument("--label", action="append", metavar="KEY=VALUE", help="ask for a label (repeatable)")
    enroll.add_argument("--discover-timeout", type=float, default=5.0, metavar="S", help="mDNS browse time")
    enroll.add_argument("--mdns-interface", metavar="ADDR", help="browse on this address only (default: all)")
    enroll.add_argument("--json", action="store_true")
    enroll.set_defaults(handler=_enroll)

    profiles = commands.add_parser(
        "profiles", help="hardware profiles usable on this host, most preferred first, with evidence"
    )
    profiles.add_argument("--json", action="store_true", help="machine-readable output")
    profiles.add_argument("--all", action="store_true", help="also list unusable profiles and why")
    profiles.set_defaults(handler=_profiles)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    _configure_logging("error")  # one-shot commands print their own one-line outcome; `run` logs more
    return run_cli(build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
