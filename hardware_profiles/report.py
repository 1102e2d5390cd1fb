"""Human-readable rendering of detection results, for the CLI (`--json` encodes the Structs instead).

Invariant: rendering is pure (values in, text out) and shows profiles in the order given, which
`detect()` makes the preference order.
"""

from __future__ import annotations

from collections.abc import Sequence

from hardware_profiles.detect import DetectedProfile
from hardware_profiles.profile import Execution, OnnxRuntimeExecution, OpenVinoExecution, TfliteExecution

_HEADER = ("RANK", "PROFILE", "RUNTIME", "DEVICE/PROVIDERS", "EVIDENCE")
_PROVIDER_SUFFIX = "ExecutionProvider"


def render_table(detected: Sequence[DetectedProfile]) -> str:
    """An aligned text table, one row per usable profile: rank, name, runtime, target, evidence."""
    rows = [_HEADER] + [
        (
            str(d.profile.preference_rank),
            d.profile.name,
            d.profile.runtime,
            _target(d.profile.execution),
            "; ".join(d.evidence),
        )
        for d in detected
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(_HEADER) - 1)]
    lines = [
        "  ".join([*(cell.ljust(w) for cell, w in zip(row[:-1], widths, strict=True)), row[-1]])
        for row in rows
    ]
    if not detected:
        lines.append("(no usable hardware profile on this host)")
    return "\n".join(line.rstrip() for line in lines)


def _target(execution: Execution) -> str:
    """Where the runtime executes: "Tensorrt, CUDA, CPU", "NPU (f16)", "CPU (XNNPACK)"."""
    match execution:
        case OnnxRuntimeExecution(providers=providers):
            return ", ".join(p.removesuffix(_PROVIDER_SUFFIX) for p in providers)
        case OpenVinoExecution(device=device, inference_precision_hint=hint):
            return f"{device} ({hint})"
        case TfliteExecution():
            return "CPU (XNNPACK)"
