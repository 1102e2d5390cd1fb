"""The validation gate: an artifact's outputs against the FP32 reference, judged by tolerances.

Pure functions over arrays (no runtime, no I/O), so the gate's arithmetic is unit-tested alone.
Outputs are compared on the first model output, shaped [samples, ...]; classification metrics
(top-1 agreement, accuracy) use the last axis as classes when it has more than one element.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from hardware_profiles.profile import ValidationTolerances
from protocols.manifest import OutputHistogram


@dataclass(frozen=True, slots=True)
class Comparison:
    samples: int
    top1_agreement: float
    max_abs_error: float
    max_relative_error: float
    cosine_similarity: float
    accuracy: float | None
    reference_accuracy: float | None


def _top1(outputs: NDArray[Any]) -> NDArray[Any] | None:
    return outputs.reshape(len(outputs), -1).argmax(axis=1) if outputs.shape[-1] > 1 else None


def compare(
    reference: NDArray[Any], candidate: NDArray[Any], labels: NDArray[Any] | None = None
) -> Comparison:
    """Metrics of `candidate` against `reference` (same shape, one row per sample)."""
    if reference.shape != candidate.shape:
        raise ValueError(f"output shapes differ: reference {reference.shape}, candidate {candidate.shape}")
    ref = reference.reshape(len(reference), -1).astype(np.float64)
    cand = candidate.reshape(len(candidate), -1).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        norms = np.linalg.norm(ref, axis=1) * np.linalg.norm(cand, axis=1)
        cosine = np.where(norms > 0, (ref * cand).sum(axis=1) / norms, 1.0)
    finite = bool(np.isfinite(cand).all())
    max_abs = float(np.abs(ref - cand).max()) if finite else float("inf")
    scale = float(np.abs(ref).max()) or 1.0
    ref_top1, cand_top1 = _top1(reference), _top1(candidate)
    agreement = 1.0 if ref_top1 is None or cand_top1 is None else float((ref_top1 == cand_top1).mean())
    accuracy = reference_accuracy = None
    if labels is not None and ref_top1 is not None and cand_top1 is not None:
        accuracy = float((cand_top1 == labels).mean())
        reference_accuracy = float((ref_top1 == labels).mean())
    return Comparison(
        samples=len(reference),
        top1_agreement=agreement if finite else 0.0,
        max_abs_error=max_abs if finite else float("inf"),
        max_relative_error=max_abs / scale if finite else float("inf"),
        cosine_similarity=float(np.nan_to_num(cosine, nan=0.0).mean()) if finite else 0.0,
        accuracy=accuracy,
        reference_accuracy=reference_accuracy,
    )


def gate(comparison: Comparison, tolerances: ValidationTolerances) -> list[str]:
    """Every tolerance the artifact breaks, as readable reasons; empty means it passes."""
    reasons = []
    if comparison.top1_agreement < tolerances.min_top1_agreement:
        reasons.append(f"top-1 agreement {comparison.top1_agreement:.3f} < {tolerances.min_top1_agreement}")
    if comparison.cosine_similarity < tolerances.min_cosine_similarity:
        reasons.append(
            f"cosine similarity {comparison.cosine_similarity:.4f} < {tolerances.min_cosine_similarity}"
        )
    if comparison.max_relative_error > tolerances.max_relative_error:
        reasons.append(
            f"max relative error {comparison.max_relative_error:.4g} > {tolerances.max_relative_error} "
            f"(max abs error {comparison.max_abs_error:.4g})"
        )
    if comparison.accuracy is not None and comparison.reference_accuracy is not None:
        drop = comparison.reference_accuracy - comparison.accuracy
        if drop > tolerances.max_accuracy_drop:
            reasons.append(
                f"accuracy {comparison.accuracy:.3f} vs reference {comparison.reference_accuracy:.3f} "
                f"(drop {drop:.3f} > {tolerances.max_accuracy_drop})"
            )
    return reasons


def reference_histogram(reference: NDArray[Any], bins: int = 20) -> OutputHistogram:
    """The FP32 model's output distribution on the validation set, for drift (PSI) on devices."""
    top1 = _top1(reference)
    if top1 is not None:
        classes = reference.reshape(len(reference), -1).shape[1]
        return OutputHistogram(
            kind="top1", counts=tuple(int(c) for c in np.bincount(top1, minlength=classes))
        )
    counts, edges = np.histogram(reference.reshape(-1), bins=bins)
    return OutputHistogram(
        kind="bins", counts=tuple(int(c) for c in counts), bin_edges=tuple(float(e) for e in edges)
    )
