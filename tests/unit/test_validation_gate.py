"""The validation gate's arithmetic, on plain arrays."""

from __future__ import annotations

import numpy as np
import pytest

from hardware_profiles.loader import load_profile
from model_compiler.validation import compare, gate, reference_histogram

RNG = np.random.default_rng(0)
REFERENCE = RNG.normal(size=(200, 10)).astype(np.float32) * 5
LABELS = REFERENCE.argmax(axis=1)
INT8 = load_profile("cpu-x86_64").validation


def test_identical_outputs_pass_every_tolerance() -> None:
    comparison = compare(REFERENCE, REFERENCE.copy(), LABELS)
    assert comparison.top1_agreement == 1.0 and comparison.max_abs_error == 0.0
    assert comparison.cosine_similarity == pytest.approx(1.0)
    assert gate(comparison, INT8) == []


def test_small_quantization_noise_passes() -> None:
    noisy = REFERENCE + RNG.normal(scale=0.05, size=REFERENCE.shape).astype(np.float32)
    assert gate(compare(REFERENCE, noisy, LABELS), INT8) == []


def test_silent_collapse_to_a_third_agreement_is_rejected_with_its_numbers() -> None:
    collapsed = REFERENCE.copy()
    scrambled = RNG.permutation(len(collapsed))[: int(0.69 * len(collapsed))]
    collapsed[scrambled] = RNG.normal(size=(len(scrambled), 10)) * 5
    comparison = compare(REFERENCE, collapsed, LABELS)
    reasons = gate(comparison, INT8)
    assert comparison.top1_agreement < 0.5
    assert any(r.startswith("top-1 agreement 0.") for r in reasons)
    assert any("accuracy" in r and "drop" in r for r in reasons)


def test_non_finite_outputs_are_rejected() -> None:
    broken = REFERENCE.copy()
    broken[3, 2] = np.nan
    comparison = compare(REFERENCE, broken)
    assert comparison.max_abs_error == float("inf")
    assert gate(comparison, INT8)


def test_shape_mismatch_is_an_error_not_a_pass() -> None:
    with pytest.raises(ValueError, match="shapes differ"):
        compare(REFERENCE, REFERENCE[:, :5])


def test_reference_histogram_counts_top1_classes() -> None:
    histogram = reference_histogram(REFERENCE)
    assert histogram.kind == "top1"
    assert sum(histogram.counts) == len(REFERENCE)
    assert histogram.counts == tuple(np.bincount(LABELS, minlength=10))


def test_regression_outputs_get_a_binned_histogram() -> None:
    histogram = reference_histogram(REFERENCE[:, :1], bins=8)
    assert histogram.kind == "bins" and len(histogram.bin_edges) == 9 and sum(histogram.counts) == 200
