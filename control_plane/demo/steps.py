"""The story `edgefabric demo` tells, one numbered step at a time, through the real pieces.

A control plane (`edgefabric up`, embedded broker) and three agents (`cpu-x86_64` and
`intel-cpu-openvino` over NATS, `cpu-x86_64` over MQTT only) run as subprocesses. Digits v1 is
trained, pushed, compiled and validated per profile, signed and rolled out canary -> all with gates
while background requests give the gates real telemetry; held-out images go through each agent's local
API. Then v2, the same classifier made far heavier (`models.py`), takes the same road and its canary
wave fails the latency-regression gate: the rollout halts and rolls back, and every agent is shown to
answer with v1 again.

Invariants:
- Each step either did what its line says or raises (`StepFailedError` through `report.py`): the story
  never goes on from a step that did not happen. In particular it passes only if v1 completed on every
  agent, v2's rollout ended `rolled_back` because `latency_regression_pct` failed, and every agent
  then answers with v1.
- Every wait polls with a deadline (`*_TIMEOUT_S`).
- Devices sort so the canary of `cpu-x86_64` is the NATS device (`edge-cpu` < `edge-mqtt`): the engine
  sends the agent's rollback command over NATS only, and a device already on v2 refuses v1 from its
  desired state alone (anti-rollback floor), so an MQTT-only canary could not be rolled back.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import onnx

from control_plane.client import ApiClient
from control_plane.compile_jobs.schemas import CompileJob, StartCompileRequest
from control_plane.demo.errors import DemoError
from control_plane.demo.inference import CheckResult, Traffic, agent_status, check
from control_plane.demo.models import INPUT_NAME, DemoModels, heavier_v2, train_v1
from control_plane.demo.processes import (
    Agent,
    AgentSpec,
    ControlPlane,
    Supervisor,
    enroll_agent,
    start_agent,
    start_control_plane,
)
from control_plane.demo.report import AgentSummary, Outcome, Report, Step
from control_plane.fleet.schemas import CreatedEnrollmentToken, CreateEnrollmentTokenRequest, DeviceInfo
from control_plane.registry.schemas import ModelVersionInfo
from control_plane.releases.schemas import CreateReleaseRequest, ReleaseInfo
from control_plane.rollouts.schemas import (
    GateResult,
    Gates,
    RolloutDevicePage,
    RolloutSpec,
    RolloutState,
    RolloutStatus,
    WaveStep,
)

T = TypeVar("T")

MODEL = "digits"
PROFILES = ("cpu-x86_64", "intel-cpu-openvino")
AGENTS = (
    AgentSpec(device_id="edge-cpu", profile="cpu-x86_64", transport="nats"),
    AgentSpec(device_id="edge-openvino", profile="intel-cpu-openvino", transport="nats"),
    AgentSpec(device_id="edge-mqtt", profile="cpu-x86_64", transport="mqtt"),
)
CHECK_SAMPLES = 200
"""Held-out images each agent classifies per check (of the 340 neither trained nor validated on)."""
MAX_ACCURACY_DROP = 0.05
"""How far below v1's FP32 accuracy an agent's answers may be before the check fails."""
GATES = Gates(soak_s=4.0, min_requests=20, max_error_rate=0.05, max_latency_regression_pct=50.0)
WAVES = (WaveStep(count=1), WaveStep(percent=100.0))
DEVICE_DEADLINE_S = 120.0
TRAFFIC_PERIOD_S = 0.1
CONTROL_PLANE_SETTINGS = {
    "heartbeat_interval_s": 1.0,
    "device_flush_interval_s": 0.5,
    "rollout_tick_interval_s": 0.5,
}
"""`edgefabric up` settings that make devices show online and the engine step within a second."""
AGENT_ENV = {
    "EDGEFABRIC_AGENT_HEARTBEAT_INTERVAL_S": "1",
    "EDGEFABRIC_AGENT_MAX_BATCH_SIZE": "1",  # no batching delay: the latency gate sees the model's time
    "EDGEFABRIC_AGENT_INFERENCE_THREADS": "1",  # three agents share the machine
}
TELEMETRY_INTERVAL_S = 1.0
ONLINE_TIMEOUT_S = 90.0
COMPILE_TIMEOUT_S = 600.0
ROLLOUT_TIMEOUT_S = 300.0
SERVING_TIMEOUT_S = 60.0
POLL_S = 0.5


@dataclass
class _Checks:
    """Held-out checks of one agent, both rounds together."""

    results: list[CheckResult] = field(default_factory=list)

    @property
    def requests(self) -> int:
        return sum(r.requests for r in self.results)

    @property
    def accuracy(self) -> float:
        answered = sum(r.requests - r.errors for r in self.results)
        return sum(r.correct for r in self.results) / answered if answered else 0.0

    @property
    def p95_ms(self) -> float | None:
        merged = CheckResult(latencies_ms=[ms for r in self.results for ms in r.latencies_ms])
        return merged.p95_ms


class Story:
    """Runs the steps in order over `work_dir` (control plane data, agent state, models, logs)."""

    def __init__(self, work_dir: Path, api_port: int, supervisor: Supervisor) -> None:
        self.work_dir = work_dir
        self.api_port = api_port
        self.supervisor = supervisor
        self._plane: ControlPlane | None = None
        self._client: ApiClient | None = None
        self._agents: list[Agent] = []
        self._models: DemoModels | None = None
        self._checks: dict[str, _Checks] = {spec.device_id: _Checks() for spec in AGENTS}
        self._background_requests = 0

    @property
    def plane(self) -> ControlPlane:
        assert self._plane is not None, "step 1 starts the control plane"
        return self._plane

    @property
    def client(self) -> ApiClient:
        assert self._client is not None, "step 1 starts the control plane"
        return self._client

    @property
    def models(self) -> DemoModels:
        assert self._models is not None, "step 3 trains the models"
        return self._models

    @property
    def steps(self) -> list[tuple[str, Callable[[Step], None]]]:
        """(title, action) of every step, in order."""
        return [
            (
                "start the control plane: edgefabric up with its embedded NATS + MQTT broker",
                self._start_plane,
            ),
            (f"enroll and start {len(AGENTS)} agents", self._start_agents),
            (f"train {MODEL} v1 on scikit-learn's bundled digits", self._train),
            (f"push {MODEL} v1 to the registry", lambda step: self._push("1", self.models.v1, step)),
            (f"compile {MODEL} v1 for {', '.join(PROFILES)}", lambda step: self._compile("1", step)),
            (f"sign release {MODEL} v1", lambda step: self._release("1", step)),
            (f"roll out {MODEL} v1: canary, then all (gates on)", self._roll_out_v1),
            ("inference on held-out digits through each agent's local API", self._check_v1),
            (f"build {MODEL} v2 (deliberately far heavier), push, compile, sign", self._prepare_v2),
            (f"roll out {MODEL} v2: the canary's latency gate must stop it", self._roll_out_v2),
            ("prove every agent still serves v1", self._prove_v1),
        ]

    def run(self, report: Report) -> Outcome:
        """Every step in order; the first that fails raises `StepFailedError`."""
        for title, action in self.steps:
            with report.step(title) as step:
                action(step)
        return self._outcome()

    # --- steps ---------------------------------------------------------------------------------

    def _start_plane(self, step: Step) -> None:
        config = self.work_dir / "control-plane.toml"
        config.write_text("".join(f"{key} = {value}\n" for key, value in CONTROL_PLANE_SETTINGS.items()))
        self._plane = start_control_plane(
            self.supervisor, self.work_dir / "control-plane", config, self.api_port
        )
        self._client = ApiClient(self.plane.api_url, self.plane.admin_token)
        step.detail(f"api {self.plane.api_url}, nats {self.plane.nats_url}, mqtt {self.plane.mqtt_url}")
        step.done("ready")

    def _start_agents(self, step: Step) -> None:
        token = self.client.call(
            "POST",
            "/api/v1/enrollment-tokens",
            CreatedEnrollmentToken,
            body=CreateEnrollmentTokenRequest(name="demo", max_uses=len(AGENTS), labels={"demo": "true"}),
        )
        for spec in AGENTS:
            step.progress(f"enrolling {spec.device_id}")
            agent_dir = self.work_dir / "agents" / spec.device_id
            config = enroll_agent(self.supervisor, spec, self.plane.api_url, token.token, agent_dir)
            agent = start_agent(self.supervisor, spec, config, AGENT_ENV, TELEMETRY_INTERVAL_S)
            self._agents.append(agent)
        self._wait_online(step)
        for agent in self._agents:
            spec = agent.spec
            step.detail(
                f"{spec.device_id}: {spec.profile} over {spec.transport.upper()}, "
                f"local API http://127.0.0.1:{agent.port}"
            )
        step.done(f"{len(self._agents)} online")

    def _wait_online(self, step: Step) -> None:
        def online() -> list[str] | None:
            ready = []
            for agent in self._agents:
                if agent.child.exit_code is not None:
                    raise agent.child.exited_error()
                status = agent_status(agent.port)
                device = self.client.call("GET", f"/api/v1/devices/{agent.spec.device_id}", DeviceInfo)
                if status is not None and status.is_connected and device.online:
                    ready.append(agent.spec.device_id)
            step.progress(f"{len(ready)} of {len(self._agents)} online")
            return ready if len(ready) == len(self._agents) else None

        _poll(online, ONLINE_TIMEOUT_S, "every agent online in the control plane")

    def _train(self, step: Step) -> None:
        self._models = train_v1()
        step.detail(
            f"MLP 64-128-10 trained in numpy: FP32 accuracy {self.models.reference_accuracy:.3f} "
            "on 540 held-out images"
        )
        step.done("trained")

    def _push(self, version: str, model: onnx.ModelProto, step: Step) -> None:
        saved = self.models.save(model, self.work_dir / "models" / f"v{version}")
        pushed = self.client.upload(
            "/api/v1/models",
            ModelVersionInfo,
            fields={"name": MODEL, "version": version},
            files={
                "model": saved.model_path,
                "calibration": saved.calibration_path,
                "validation": saved.validation_path,
            },
        )
        step.detail(f"{MODEL} v{version}: {pushed.onnx_size} bytes, sha256 {pushed.onnx_sha256[:12]}…")
        step.done("pushed")

    def _compile(self, version: str, step: Step) -> None:
        job = self.client.call(
            "POST",
            f"/api/v1/models/{MODEL}/versions/{version}/compile",
            CompileJob,
            body=StartCompileRequest(profiles=list(PROFILES)),
        )

        def finished() -> CompileJob | None:
            current = self.client.call("GET", f"/api/v1/compile-jobs/{job.id}", CompileJob)
            step.progress(", ".join(f"{b.profile}: {b.stage or b.status}" for b in current.profiles))
            return current if current.is_finished else None

        done = _poll(finished, COMPILE_TIMEOUT_S, f"compile job {job.id}")
        not_built = [b for b in done.profiles if b.status != "built"]
        if done.state != "succeeded" or not_built:
            reasons = "; ".join(f"{b.profile} {b.status}: {b.reason}" for b in not_built)
            raise DemoError(f"compile job {job.id} {done.state}: {reasons or done.reason}")
        for build in done.profiles:
            metrics, latency = build.validation, build.host_latency
            numbers = [f"{build.precision}"]
            if metrics is not None:
                numbers.append(f"top-1 agreement {metrics.top1_agreement:.3f} with FP32")
                if metrics.accuracy is not None:
                    numbers.append(f"accuracy {metrics.accuracy:.3f} on {metrics.samples} images")
            if latency is not None:
                numbers.append(f"host p95 {latency.p95_ms:.2f} ms")
            step.detail(f"{build.profile}: " + ", ".join(numbers))
        step.done("built and validated")

    def _release(self, version: str, step: Step) -> None:
        release = self.client.call(
            "POST", "/api/v1/releases", ReleaseInfo, body=CreateReleaseRequest(model=MODEL, version=version)
        )
        targets = ", ".join(f"{t.target_path} ({t.size_bytes // 1024} KiB)" for t in release.targets)
        step.detail(
            f"TUF targets v{release.targets_version}, model counter {release.model_counter}: {targets}"
        )
        step.done("signed")

    def _roll_out_v1(self, step: Step) -> None:
        done = self._roll_out("1", step)
        if done.state != RolloutState.COMPLETED:
            raise DemoError(f"rollout {done.id} ended {done.state}: {done.reason}")
        self._describe_waves(done, step)
        self._wait_serving("1", step)
        step.done("completed")

    def _prepare_v2(self, step: Step) -> None:
        step.progress("adding the convolutional branch")
        v2 = heavier_v2(self.models)
        step.detail(
            f"v2 = v1 + a convolutional branch: {v2.macs / 1e6:.1f} M multiply-adds per image "
            f"(v1: {self.models.v1_macs / 1e3:.1f} k); top-1 agreement with v1 {v2.top1_agreement:.3f} "
            "on the held-out images"
        )
        self._push("2", v2.model, step)
        self._compile("2", step)
        self._release("2", step)
        step.done("signed")

    def _roll_out_v2(self, step: Step) -> None:
        done = self._roll_out("2", step)
        failed = next((d for d in done.decisions if d.kind == "gates" and d.outcome == "failed"), None)
        regression = (
            next(
                (g for g in failed.gates if g.gate == "latency_regression_pct" and g.status == "failed"),
                None,
            )
            if failed is not None
            else None
        )
        if done.state != RolloutState.ROLLED_BACK or failed is None or regression is None:
            raise DemoError(
                f"rollout {done.id} of v2 ended {done.state} ({done.reason}); the latency-regression "
                "gate did not stop it"
            )
        step.detail(f"wave {failed.wave} canaries: {', '.join(self._wave_devices(done.id, failed.wave))}")
        baseline = done.baseline_version or "the baseline"
        step.detail(f"v2 halted: {_regression_text(failed.gates, regression, baseline)}")
        step.detail("other gates: " + _gates_text([g for g in failed.gates if g is not regression]))
        step.detail(done.decisions[-1].summary)
        self._wait_serving("1", step)
        step.done("halted and rolled back")

    # --- pieces --------------------------------------------------------------------------------

    def _roll_out(self, version: str, step: Step) -> RolloutStatus:
        spec = RolloutSpec(
            model=MODEL, version=version, waves=WAVES, gates=GATES, device_deadline_s=DEVICE_DEADLINE_S
        )
        ports = [agent.port for agent in self._agents]
        with Traffic(ports, MODEL, INPUT_NAME, self.models.check_pixels, TRAFFIC_PERIOD_S) as traffic:
            created = self.client.call("POST", "/api/v1/rollouts", RolloutStatus, body=spec)

            def ended() -> RolloutStatus | None:
                status = self.client.call("GET", f"/api/v1/rollouts/{created.id}", RolloutStatus)
                step.progress(_rollout_progress(status))
                return status if status.state in _ENDED else None

            done = _poll(ended, ROLLOUT_TIMEOUT_S, f"rollout {created.id}")
        self._background_requests += sum(traffic.sent.values())
        return done

    def _describe_waves(self, status: RolloutStatus, step: Step) -> None:
        for wave in status.waves:
            passed = next(
                (
                    d
                    for d in reversed(status.decisions)
                    if d.wave == wave.position and d.kind == "gates" and d.outcome == "passed"
                ),
                None,
            )
            devices = ", ".join(self._wave_devices(status.id, wave.position)) or "none"
            gates = _gates_text(passed.gates) if passed else wave.state
            step.detail(f"wave {wave.position} ({devices}): {gates}")

    def _wave_devices(self, rollout_id: str, wave: int | None) -> list[str]:
        page = self.client.call(
            "GET", f"/api/v1/rollouts/{rollout_id}/devices", RolloutDevicePage, query={"limit": 100}
        )
        return [d.device_id for d in page.items if d.wave == wave]

    def _wait_serving(self, version: str, step: Step) -> None:
        def serving() -> bool:
            versions = {}
            for agent in self._agents:
                status = agent_status(agent.port)
                versions[agent.spec.device_id] = status.serving(MODEL) if status else None
            step.progress("serving: " + ", ".join(f"{d} v{v}" for d, v in versions.items()))
            return all(v == version for v in versions.values())

        _poll(serving, SERVING_TIMEOUT_S, f"every agent serving v{version}")

    def _check_v1(self, step: Step) -> None:
        self._check_all("1", step)
        step.done(f"{len(self._agents)} agents answered with v1")

    def _prove_v1(self, step: Step) -> None:
        self._wait_serving("1", step)
        self._check_all("1", step)
        step.done("all on v1")

    def _check_all(self, version: str, step: Step) -> None:
        models = self.models
        pixels, labels = models.check_pixels[:CHECK_SAMPLES], models.check_labels[:CHECK_SAMPLES]
        for agent in self._agents:
            spec = agent.spec
            step.progress(f"{spec.device_id}: {len(pixels)} requests")
            result = check(agent.port, MODEL, INPUT_NAME, pixels, labels)
            self._checks[spec.device_id].results.append(result)
            answered_by = ", ".join(f"v{v}: {n}" for v, n in sorted(result.versions.items()))
            p95 = f"{result.p95_ms:.2f} ms" if result.p95_ms is not None else "-"
            step.detail(
                f"{spec.device_id} ({spec.profile}, {spec.transport}): {result.requests} requests, "
                f"accuracy {result.accuracy:.3f}, p95 {p95} round trip, answered by {answered_by or 'none'}"
            )
            if result.errors:
                raise DemoError(f"{spec.device_id}: {result.errors} requests failed: {result.first_error}")
            if set(result.versions) != {version}:
                raise DemoError(f"{spec.device_id} answered with {answered_by}, not only v{version}")
            if result.accuracy < models.reference_accuracy - MAX_ACCURACY_DROP:
                raise DemoError(
                    f"{spec.device_id}: accuracy {result.accuracy:.3f} is more than {MAX_ACCURACY_DROP} "
                    f"below the FP32 model's {models.reference_accuracy:.3f}"
                )

    def _outcome(self) -> Outcome:
        rows = []
        for agent in self._agents:
            status = agent_status(agent.port)
            checks = self._checks[agent.spec.device_id]
            rows.append(
                AgentSummary(
                    device_id=agent.spec.device_id,
                    profile=agent.spec.profile,
                    transport=agent.spec.transport,
                    serving=status.serving(MODEL) if status else None,
                    requests=checks.requests,
                    accuracy=checks.accuracy,
                    p95_ms=checks.p95_ms,
                )
            )
        return Outcome(
            api_url=self.plane.api_url,
            admin_token_path=self.plane.admin_token_path,
            agents=rows,
            agent_ports={agent.spec.device_id: agent.port for agent in self._agents},
            background_requests=self._background_requests,
        )


_ENDED = {RolloutState.COMPLETED, RolloutState.ROLLED_BACK, RolloutState.ABORTED}


def _poll(probe: Callable[[], T | None], timeout_s: float, what: str) -> T:
    """`probe()` every `POLL_S` until it returns a value other than None or False."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = probe()
        if value is not None and value is not False:
            return value
        if time.monotonic() > deadline:
            raise DemoError(f"timed out after {timeout_s:g} s waiting for {what}")
        time.sleep(POLL_S)


def _rollout_progress(status: RolloutStatus) -> str:
    if not status.waves:
        return str(status.state)
    wave = status.waves[min(status.current_wave, len(status.waves) - 1)]
    waiting = next((g.reason for g in wave.gates if g.status == "waiting"), None)
    return f"{status.state}, wave {wave.position + 1}/{len(status.waves)}: {waiting or wave.state}"


def _gates_text(gates: list[GateResult]) -> str:
    """The gates that are on, each with its numbers."""
    return "; ".join(_gate_text(g) for g in gates if g.status != "skipped" or g.reason != "off")


_GATE_NAMES = {
    "install_success_ratio": "install",
    "p95_latency_budget": "p95 budget",
    "latency_regression_pct": "p95 regression",
    "error_rate": "error rate",
    "drift_psi": "drift",
    "shadow_agreement": "shadow agreement",
}


def _gate_text(gate: GateResult) -> str:
    if gate.value is None or gate.threshold is None:
        name = _GATE_NAMES.get(gate.gate, gate.gate)
        return f"{name} {gate.status}" + (f" ({gate.reason})" if gate.status == "skipped" else "")
    if gate.gate == "install_success_ratio":
        return f"installed {gate.value:.0%} (need {gate.threshold:.0%}) {gate.status}"
    if gate.gate == "p95_latency_budget":
        return f"p95 {gate.value:.2f} ms <= {gate.threshold:g} ms budget {gate.status}"
    if gate.gate == "latency_regression_pct":
        return f"p95 {gate.value:+.0f} % vs baseline (limit +{gate.threshold:g} %) {gate.status}"
    if gate.gate == "error_rate":
        return f"error rate {gate.value:.3f} <= {gate.threshold:g} {gate.status}"
    return f"{gate.gate} {gate.value:.4g} vs {gate.threshold:g} {gate.status}"


def _regression_text(gates: list[GateResult], regression: GateResult, baseline: str) -> str:
    """`p95 latency 4.9 ms vs 0.95 ms on v1 (+416 %, limit +50 %)` from the failed decision's numbers:
    the budget gate carries the new version's p95, the regression gate the relative change."""
    assert regression.value is not None and regression.threshold is not None
    budget = next((g for g in gates if g.gate == "p95_latency_budget" and g.value is not None), None)
    change = f"{regression.value:+.0f} %, limit +{regression.threshold:g} %"
    if budget is None or budget.value is None:
        return f"p95 latency {change} against v{baseline}"
    baseline_ms = budget.value / (1.0 + regression.value / 100.0)
    return f"p95 latency {budget.value:.2f} ms vs {baseline_ms:.2f} ms on v{baseline} ({change})"
