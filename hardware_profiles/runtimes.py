"""Loading an artifact in its profile's runtime and running it: onnxruntime, OpenVINO, LiteRT.

One interface (`InferenceSession`) over three backends, shared by the compiler's validation gate
and the agent's serving path, so an artifact is validated in exactly the code that will run it.
Runtimes are imported lazily: a device installs only the one its profile needs.

Invariants:
- A session never silently changes numerics: OpenVINO gets the profile's inference precision
  pinned (never the device default, which is bf16 on some CPUs); onnxruntime uses the profile's
  execution providers that exist here, in order.
- When the profile's accelerator is absent, `open_session(..., allow_cpu_equivalent=True)` runs
  on the nearest CPU equivalent and says so (`is_cpu_equivalent`, `description`).
- OpenVINO loads the IR (`.xml`), never the `.onnx` (five times faster to load).
"""

from __future__ import annotations

import importlib
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from numpy.typing import NDArray

from hardware_profiles.errors import ProfileError
from hardware_profiles.profile import HardwareProfile, OnnxRuntimeExecution, OpenVinoExecution
from protocols.manifest import ArtifactManifest, Runtime, TensorSpec

Feeds = dict[str, NDArray[Any]]


class RuntimeUnavailableError(ProfileError):
    """The runtime (or the device it needs) is not available on this host."""

    def __init__(self, runtime: str, reason: str, extra: str | None = None) -> None:
        hint = f'; install it with: pip install "edgefabric[{extra}]"' if extra else ""
        super().__init__(f"{runtime} unavailable: {reason}{hint}")
        self.runtime = runtime
        self.reason = reason


class ModelLoadError(ProfileError):
    """The runtime refused the artifact (corrupt file, unsupported operator, ...)."""

    def __init__(self, runtime: str, path: Path, reason: str) -> None:
        super().__init__(f"{runtime} cannot load {path.name}: {reason}")
        self.runtime = runtime
        self.path = path
        self.reason = reason


class InferenceSession(Protocol):
    """A loaded model. `run` is synchronous and thread-safe per backend's own rules."""

    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    description: str
    is_cpu_equivalent: bool

    def run(self, feeds: Feeds) -> Feeds: ...


@dataclass(frozen=True, slots=True)
class ExecutionSettings:
    """How to run: ORT providers (preferred first), or an OpenVINO device and precision."""

    runtime: Runtime
    providers: tuple[str, ...] = ()
    device: str | None = None
    inference_precision_hint: str | None = None
    threads: int | None = None
    input_permutations: tuple[tuple[str, tuple[int, ...]], ...] = ()
    """(input name, axes) pairs: feeds come in the source model's layout and are transposed by
    these axes before the runtime sees them (onnx2tf artifacts take NHWC where ONNX took NCHW)."""


def _import(module: str, runtime: str, extra: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise RuntimeUnavailableError(runtime, f"cannot import {module}", extra) from e


def _dims(shape: Any) -> tuple[int | None, ...]:
    return tuple(d if isinstance(d, int) and d >= 0 else None for d in shape)


class _OrtSession:
    def __init__(self, path: Path, settings: ExecutionSettings, allow_cpu_equivalent: bool) -> None:
        ort = _import("onnxruntime", "onnxruntime", "agent")
        available = set(ort.get_available_providers())
        wanted = settings.providers or ("CPUExecutionProvider",)
        providers = [p for p in wanted if p in available]
        accelerated = [p for p in providers if p != "CPUExecutionProvider"]
        wanted_accelerator = any(p != "CPUExecutionProvider" for p in wanted)
        if wanted_accelerator and not accelerated and not allow_cpu_equivalent:
            raise RuntimeUnavailableError("onnxruntime", f"none of {list(wanted)} available here")
        if "CPUExecutionProvider" not in providers:
            providers.append("CPUExecutionProvider")
        options = ort.SessionOptions()
        if settings.threads:
            options.intra_op_num_threads = settings.threads
        try:
            self._session = ort.InferenceSession(str(path), sess_options=options, providers=providers)
        except Exception as e:  # ORT raises bare RuntimeError subclasses (Fail, InvalidGraph, ...)
            raise ModelLoadError("onnxruntime", path, str(e).splitlines()[0]) from e
        active = self._session.get_providers()
        self.is_cpu_equivalent = wanted_accelerator and active == ["CPUExecutionProvider"]
        self.description = f"onnxruntime {ort.__version__} {','.join(active)}"
        self.inputs = tuple(
            TensorSpec(name=i.name, dtype=_ort_dtype(i.type), shape=_dims(i.shape))
            for i in self._session.get_inputs()
        )
        self.outputs = tuple(
            TensorSpec(name=o.name, dtype=_ort_dtype(o.type), shape=_dims(o.shape))
            for o in self._session.get_outputs()
        )

    def run(self, feeds: Feeds) -> Feeds:
        names = [o.name for o in self.outputs]
        return dict(zip(names, self._session.run(names, feeds), strict=True))


def _ort_dtype(type_name: str) -> str:
    """`tensor(float)` -> `float32` (numpy names)."""
    inner = type_name.removeprefix("tensor(").removesuffix(")")
    return {"float": "float32", "double": "float64", "float16": "float16"}.get(inner, inner)


class _OpenVinoSession:
    def __init__(self, path: Path, settings: ExecutionSettings, allow_cpu_equivalent: bool) -> None:
        ov = _import("openvino", "openvino", "openvino")
        core = ov.Core()
        device = settings.device or "CPU"
        precision = settings.inference_precision_hint or "f32"
        self.is_cpu_equivalent = False
        if device not in core.available_devices:
            if not allow_cpu_equivalent:
                raise RuntimeUnavailableError("openvino", f"device {device} not present")
            device, precision, self.is_cpu_equivalent = "CPU", "f32", True
        config = {"INFERENCE_PRECISION_HINT": precision, "PERFORMANCE_HINT": "LATENCY"}
        if settings.threads:
            config["INFERENCE_NUM_THREADS"] = str(settings.threads)
        try:
            self._compiled = core.compile_model(core.read_model(str(path)), device, config)
        except Exception as e:  # OpenVINO raises RuntimeError with multi-line text
            raise ModelLoadError("openvino", path, str(e).strip().splitlines()[0]) from e
        self._request = self._compiled.create_infer_request()
        self._lock = threading.Lock()  # one reusable request; creating one per call costs ~0.25 ms
        self.description = f"openvino {ov.__version__} {device} ({precision})"
        self.inputs = tuple(_ov_spec(p) for p in self._compiled.inputs)
        self.outputs = tuple(_ov_spec(p) for p in self._compiled.outputs)

    def run(self, feeds: Feeds) -> Feeds:
        with self._lock:
            result = self._request.infer(feeds)
        return {
            spec.name: np.asarray(result[port])
            for spec, port in zip(self.outputs, self._compiled.outputs, strict=True)
        }


def _ov_spec(port: Any) -> TensorSpec:
    shape = port.get_partial_shape()
    dims = tuple(d.get_length() if d.is_static else None for d in shape)
    return TensorSpec(name=port.get_any_name(), dtype=port.get_element_type().to_dtype().name, shape=dims)


class _LiteRtSession:
    def __init__(self, path: Path, settings: ExecutionSettings, allow_cpu_equivalent: bool) -> None:
        module = _import("ai_edge_litert.interpreter", "LiteRT", "tflite")
        try:
            self._interpreter = module.Interpreter(model_path=str(path), num_threads=settings.threads or None)
            self._interpreter.allocate_tensors()
        except Exception as e:  # LiteRT raises ValueError/RuntimeError
            raise ModelLoadError("tflite", path, str(e).splitlines()[0]) from e
        self.is_cpu_equivalent = False
        self.description = "LiteRT (ai-edge-litert) CPU"
        self._permutations = dict(settings.input_permutations)
        self._input_details = self._interpreter.get_input_details()
        self._output_details = self._interpreter.get_output_details()
        self.inputs = tuple(self._source_layout(_tfl_spec(d)) for d in self._input_details)
        self.outputs = tuple(_tfl_spec(d) for d in self._output_details)

    def _source_layout(self, spec: TensorSpec) -> TensorSpec:
        """The input as callers feed it: in the source model's layout, as float."""
        axes = self._permutations.get(spec.name)
        shape = tuple(spec.shape[axes.index(i)] for i in range(len(axes))) if axes else spec.shape
        return TensorSpec(
            name=spec.name, dtype="float32" if spec.dtype in ("int8", "uint8") else spec.dtype, shape=shape
        )

    def run(self, feeds: Feeds) -> Feeds:
        for detail in self._input_details:
            value = feeds[detail["name"]]
            axes = self._permutations.get(detail["name"])
            if axes:
                value = value.transpose(axes)
            scale, zero = detail["quantization"]
            if scale:  # full-integer model: quantize the float input
                value = np.clip(np.round(value / scale + zero), *_int_range(detail["dtype"]))
            self._interpreter.set_tensor(detail["index"], value.astype(detail["dtype"]))
        self._interpreter.invoke()
        outputs: Feeds = {}
        for detail in self._output_details:
            value = self._interpreter.get_tensor(detail["index"])
            scale, zero = detail["quantization"]
            outputs[detail["name"]] = (value.astype(np.float32) - zero) * scale if scale else value
        return outputs


def _int_range(dtype: Any) -> tuple[int, int]:
    info = np.iinfo(dtype)
    return int(info.min), int(info.max)


def _tfl_spec(detail: dict[str, Any]) -> TensorSpec:
    return TensorSpec(
        name=detail["name"],
        dtype=np.dtype(detail["dtype"]).name,
        shape=tuple(int(d) for d in detail["shape"]),
    )


def open_session(
    model_path: Path, settings: ExecutionSettings, *, allow_cpu_equivalent: bool = False
) -> InferenceSession:
    """Load `model_path` in `settings.runtime`; raise `RuntimeUnavailableError` / `ModelLoadError`."""
    if settings.runtime == "onnxruntime":
        return _OrtSession(model_path, settings, allow_cpu_equivalent)
    if settings.runtime == "openvino":
        return _OpenVinoSession(model_path, settings, allow_cpu_equivalent)
    return _LiteRtSession(model_path, settings, allow_cpu_equivalent)


def settings_for(profile: HardwareProfile, *, threads: int | None = None) -> ExecutionSettings:
    """The execution settings a profile prescribes for its artifacts."""
    execution = profile.execution
    if isinstance(execution, OnnxRuntimeExecution):
        return ExecutionSettings(runtime="onnxruntime", providers=execution.providers, threads=threads)
    if isinstance(execution, OpenVinoExecution):
        return ExecutionSettings(
            runtime="openvino",
            device=execution.device,
            inference_precision_hint=execution.inference_precision_hint,
            threads=threads,
        )
    return ExecutionSettings(runtime="tflite", threads=threads)


def settings_from_manifest(manifest: ArtifactManifest, *, threads: int | None = None) -> ExecutionSettings:
    """The execution settings an artifact's manifest prescribes (what the agent loads it with)."""
    return ExecutionSettings(
        runtime=manifest.runtime,
        providers=manifest.providers,
        device=manifest.device,
        inference_precision_hint=manifest.inference_precision_hint,
        threads=threads,
        input_permutations=tuple(manifest.input_permutations.items()),
    )
