"""Host detection: which hardware profiles this machine can run, and the evidence for each.

Two halves:
- `gather_host_facts()` is the only I/O: `platform.machine()`, the flags in /proc/cpuinfo, the
  providers onnxruntime offers, the devices OpenVINO sees, and which required Python modules are
  importable. Runtimes are imported lazily; a runtime that is missing is simply absent from the
  facts, one that is installed but broken is recorded in `probe_errors`. It never raises for that.
- `explain()` / `detect()` are pure decisions over `HostFacts` and profiles, testable with
  synthetic facts.

Invariants: a profile is usable only when its architecture matches and every `required_*` rule of
its `detect` table holds; preferred CPU flags add evidence but never reject. Usable profiles come
in preference order (`preference_rank`, then name), each with human-readable evidence; rejected
ones carry the reasons. Every result Struct encodes with `msgspec.json` (for `--json`).
"""

from __future__ import annotations

import importlib.util
import platform
from collections.abc import Callable, Iterable
from pathlib import Path

import msgspec

from hardware_profiles.loader import all_profiles
from hardware_profiles.profile import HardwareProfile

_CPUINFO = Path("/proc/cpuinfo")
_CPU_FLAG_KEYS = ("flags", "Features")  # x86 and Arm spellings in /proc/cpuinfo


class HostFacts(msgspec.Struct, frozen=True, kw_only=True):
    """What a host shows. `None` for a runtime means it is not importable."""

    architecture: str
    cpu_flags: frozenset[str] = frozenset()
    ort_providers: tuple[str, ...] | None = None
    openvino_devices: tuple[str, ...] | None = None
    python_modules: frozenset[str] = frozenset()
    probe_errors: tuple[str, ...] = ()


class DetectedProfile(msgspec.Struct, frozen=True, kw_only=True):
    """A profile this host can use, with the evidence that says so."""

    profile: HardwareProfile
    evidence: tuple[str, ...]

    @property
    def name(self) -> str:
        """The profile's name."""
        return self.profile.name


class RejectedProfile(msgspec.Struct, frozen=True, kw_only=True):
    """A profile this host cannot use, with every reason why."""

    name: str
    reasons: tuple[str, ...]


class Detection(msgspec.Struct, frozen=True, kw_only=True):
    """The full verdict for one host: its facts, usable profiles (preferred first), rejected ones."""

    facts: HostFacts
    usable: tuple[DetectedProfile, ...]
    rejected: tuple[RejectedProfile, ...]


def detect(
    facts: HostFacts | None = None, profiles: Iterable[HardwareProfile] | None = None
) -> list[DetectedProfile]:
    """The profiles usable on this host (or on `facts`), most preferred first."""
    return list(explain(facts, profiles).usable)


def explain(facts: HostFacts | None = None, profiles: Iterable[HardwareProfile] | None = None) -> Detection:
    """Judge every profile (packaged ones by default) against `facts` (gathered here by default)."""
    candidates = tuple(all_profiles().values() if profiles is None else profiles)
    facts = gather_host_facts(candidates) if facts is None else facts
    usable: list[DetectedProfile] = []
    rejected: list[RejectedProfile] = []
    for profile in sorted(candidates, key=lambda p: (p.preference_rank, p.name)):
        evidence, reasons = _judge(profile, facts)
        if reasons:
            rejected.append(RejectedProfile(name=profile.name, reasons=tuple(reasons)))
        else:
            usable.append(DetectedProfile(profile=profile, evidence=tuple(evidence)))
    return Detection(facts=facts, usable=tuple(usable), rejected=tuple(rejected))


def _judge(profile: HardwareProfile, facts: HostFacts) -> tuple[list[str], list[str]]:
    """Evidence for and reasons against `profile` on a host with `facts`."""
    rules = profile.detect
    evidence: list[str] = []
    reasons: list[str] = []
    if facts.architecture.lower() in rules.architectures:
        evidence.append(f"arch {facts.architecture}")
    else:
        reasons.append(f"arch {facts.architecture} is not one of {', '.join(rules.architectures)}")
    for provider in rules.required_ort_providers:
        if facts.ort_providers is None:
            reasons.append(f"onnxruntime is not importable (needs provider {provider})")
        elif provider in facts.ort_providers:
            evidence.append(f"onnxruntime provider {provider}")
        else:
            reasons.append(
                f"onnxruntime provider {provider} missing (have: {', '.join(facts.ort_providers)})"
            )
    device = rules.required_openvino_device
    if device is not None:
        if facts.openvino_devices is None:
            reasons.append(f"openvino is not importable (needs device {device})")
        elif found := [d for d in facts.openvino_devices if d == device or d.startswith(f"{device}.")]:
            evidence.append(f"openvino device {', '.join(found)}")  # GPU shows up as GPU.0, GPU.1, ...
        else:
            reasons.append(f"openvino device {device} missing (have: {', '.join(facts.openvino_devices)})")
    for module in rules.required_python_modules:
        if module in facts.python_modules:
            evidence.append(f"python module {module}")
        else:
            reasons.append(f"python module {module} is not importable")
    evidence.extend(f"cpu flag {flag}" for flag in rules.preferred_cpu_flags if flag in facts.cpu_flags)
    return evidence, reasons


def gather_host_facts(profiles: Iterable[HardwareProfile] | None = None) -> HostFacts:
    """Probe this host; checks the Python modules that `profiles` (packaged by default) require."""
    candidates = all_profiles().values() if profiles is None else profiles
    modules = {m for p in candidates for m in p.detect.required_python_modules}
    probe_errors: list[str] = []
    return HostFacts(
        architecture=platform.machine(),
        cpu_flags=_read_cpu_flags(),
        ort_providers=_probe("onnxruntime", _ort_providers, probe_errors),
        openvino_devices=_probe("openvino", _openvino_devices, probe_errors),
        python_modules=frozenset(m for m in modules if _is_importable(m)),
        probe_errors=tuple(probe_errors),
    )


def parse_cpu_flags(cpuinfo: str) -> frozenset[str]:
    """The CPU flags in /proc/cpuinfo text (the first `flags` or `Features` line)."""
    for line in cpuinfo.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() in _CPU_FLAG_KEYS:
            return frozenset(value.split())
    return frozenset()


def _read_cpu_flags() -> frozenset[str]:
    try:
        return parse_cpu_flags(_CPUINFO.read_text(encoding="utf-8", errors="replace"))
    except OSError:  # no /proc (macOS, Windows, sandboxes): no flags is honest evidence
        return frozenset()


def _ort_providers() -> tuple[str, ...]:
    import onnxruntime

    return tuple(onnxruntime.get_available_providers())


def _openvino_devices() -> tuple[str, ...]:
    import openvino

    return tuple(openvino.Core().available_devices)


def _probe(module: str, probe: Callable[[], tuple[str, ...]], errors: list[str]) -> tuple[str, ...] | None:
    """Run `probe`; None if `module` is not installed, None plus a note in `errors` if it is broken."""
    try:
        return probe()
    except ModuleNotFoundError as e:
        if e.name != module:
            errors.append(f"{module}: {type(e).__name__}: {e}")
        return None
    except Exception as e:  # a broken native runtime (missing .so, driver error) must not stop detection
        errors.append(f"{module}: {type(e).__name__}: {e}")
        return None


def _is_importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a dotted name whose parent is missing or broken
        return False
