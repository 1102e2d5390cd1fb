"""Telemetry maths without I/O: latency percentiles from summed histograms, PSI drift, and what the
ingest admits from a stream message."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from control_plane.telemetry.histograms import (
    LatencyHistogram,
    from_cumulative,
    latency_histogram_problem,
    merge,
    percentile_ms,
    psi,
)
from control_plane.telemetry.ingest import Admitted, IngestMetrics, Rejected, RoundOutcome, admit
from protocols import codec
from protocols.messages import Heartbeat, TelemetryBatch, TelemetryRecord

# --- latency histograms ------------------------------------------------------------------------


def test_cumulative_wire_buckets_become_per_bucket_counts() -> None:
    assert from_cumulative((1, 2, 5), (1, 3, 3, 4)) == LatencyHistogram(bounds=(1, 2, 5), counts=(1, 2, 0, 1))


@pytest.mark.parametrize(
    ("bounds", "buckets", "problem"),
    [
        ((), (), None),
        ((1.0, 2.0), (0, 1, 2), None),
        ((1.0, 2.0), (0, 1), "2 latency buckets for 2 bounds"),
        ((1.0, 2.0), (), "0 latency buckets for 2 bounds"),
        ((2.0, 1.0), (0, 1, 2), "strictly increasing"),
        ((1.0, 1.0), (0, 1, 2), "strictly increasing"),
        ((1.0, float("inf")), (0, 1, 2), "finite"),
        ((1.0, float("nan")), (0, 1, 2), "finite"),
        ((1.0, 2.0), (3, 1, 3), "must not decrease"),
    ],
)
def test_inconsistent_wire_histograms_are_named(
    bounds: tuple[float, ...], buckets: tuple[int, ...], problem: str | None
) -> None:
    found = latency_histogram_problem(bounds, buckets)
    assert found == problem if problem is None else problem in (found or "")


def test_percentile_interpolates_inside_the_bucket_holding_the_rank() -> None:
    histogram = LatencyHistogram(bounds=(10, 20, 50), counts=(0, 10, 0, 0))
    assert percentile_ms(histogram, 0.5) == pytest.approx(15.0)  # rank 5 of 10 in (10, 20]
    assert percentile_ms(histogram, 0.95) == pytest.approx(19.5)
    assert percentile_ms(histogram, 1.0) == pytest.approx(20.0)


def test_percentile_in_the_first_bucket_starts_at_zero() -> None:
    assert percentile_ms(LatencyHistogram(bounds=(10, 20), counts=(4, 0, 0)), 0.5) == pytest.approx(5.0)


def test_percentile_in_the_inf_bucket_is_the_highest_finite_bound() -> None:
    histogram = LatencyHistogram(bounds=(10, 20), counts=(1, 0, 9))
    assert percentile_ms(histogram, 0.5) == 20.0
    assert percentile_ms(histogram, 0.05) == pytest.approx(5.0)  # rank 0.5 of the 1 request <= 10


def test_percentile_across_buckets_uses_the_cumulative_count() -> None:
    # 100 requests: 50 <= 1 ms, 40 in (1, 2], 10 in (2, 5]: p50 is the top of the first bucket,
    # p95 is half-way through (2, 5].
    histogram = from_cumulative((1, 2, 5), (50, 90, 100, 100))
    assert percentile_ms(histogram, 0.5) == pytest.approx(1.0)
    assert percentile_ms(histogram, 0.95) == pytest.approx(3.5)


def test_percentile_without_requests_or_bounds_is_none() -> None:
    assert percentile_ms(None, 0.5) is None
    assert percentile_ms(LatencyHistogram(bounds=(1, 2), counts=(0, 0, 0)), 0.5) is None
    assert percentile_ms(LatencyHistogram(bounds=(), counts=(3,)), 0.5) is None


@pytest.mark.parametrize("q", [0.0, -0.1, 1.01])
def test_percentile_refuses_a_quantile_outside_0_1(q: float) -> None:
    with pytest.raises(ValueError, match="quantile"):
        percentile_ms(LatencyHistogram(bounds=(1,), counts=(1, 0)), q)


def test_histograms_with_the_same_bounds_merge_exactly() -> None:
    merged = merge(
        [
            LatencyHistogram(bounds=(1, 2), counts=(1, 2, 3)),
            LatencyHistogram(bounds=(1, 2), counts=(10, 0, 1)),
        ]
    )
    assert merged == LatencyHistogram(bounds=(1, 2), counts=(11, 2, 4))
    assert merge([]) is None


def test_histograms_with_different_bounds_merge_onto_the_union_at_their_upper_bounds() -> None:
    merged = merge(
        [
            LatencyHistogram(bounds=(10, 20), counts=(1, 2, 3)),
            LatencyHistogram(bounds=(15, 20), counts=(4, 5, 6)),
        ]
    )
    assert merged == LatencyHistogram(bounds=(10, 15, 20), counts=(1, 4, 7, 9))


# --- drift --------------------------------------------------------------------------------------


def test_psi_of_identical_distributions_is_zero() -> None:
    assert psi([10, 30, 60], [1, 3, 6]) == pytest.approx(0.0)


def test_psi_matches_a_hand_computed_value() -> None:
    # (0.5 - 0.9) ln(0.5 / 0.9) + (0.5 - 0.1) ln(0.5 / 0.1)
    assert psi([50, 50], [90, 10]) == pytest.approx(0.8788898309344878)


def test_psi_puts_epsilon_in_an_empty_bin_so_it_stays_finite() -> None:
    # (1 - 0.5) ln(1 / 0.5) + (1e-4 - 0.5) ln(1e-4 / 0.5)
    assert psi([10, 0], [5, 5]) == pytest.approx(4.60431846666895)


def test_psi_pads_the_shorter_histogram_with_zeros() -> None:
    assert psi([5, 5, 0], [5, 5]) == pytest.approx(0.0)
    assert psi([5, 5], [5, 5, 10]) == pytest.approx(psi([5, 5, 0], [5, 5, 10]))


def test_psi_without_counts_on_either_side_is_none() -> None:
    assert psi([], [1, 2]) is None
    assert psi([0, 0], [1, 2]) is None
    assert psi([1, 2], [0]) is None


# --- admission of stream messages ----------------------------------------------------------------

SUBJECT = "fabric.v1.telemetry.dev-1"


def record(record_id: str, **fields: object) -> TelemetryRecord:
    values: dict[str, object] = {
        "record_id": record_id,
        "model": "digits",
        "version": "1",
        "minute_start": datetime(2030, 1, 1, tzinfo=UTC),
        "count": 2,
        "latency_ms_bounds": (1.0, 2.0),
        "latency_ms_buckets": (1, 2, 2),
        **fields,
    }
    return TelemetryRecord(**values)  # type: ignore[arg-type]


def test_a_batch_from_the_device_of_its_subject_is_admitted_whole() -> None:
    batch = TelemetryBatch(device_id="dev-1", batch_id="b1", records=(record("r1"), record("r2")))
    assert admit(SUBJECT, codec.encode(batch)) == Admitted(batch, 0)


@pytest.mark.parametrize(
    "payload",
    [b"{not json", b"[]", b'{"kind": "telemetry_batch"}', codec.encode(Heartbeat(device_id="dev-1"))],
    ids=["not-json", "not-an-object", "missing-fields", "heartbeat"],
)
def test_a_message_that_is_not_a_telemetry_batch_is_rejected_as_malformed(payload: bytes) -> None:
    verdict = admit(SUBJECT, payload)
    assert isinstance(verdict, Rejected) and verdict.reason == "malformed" and verdict.detail


def test_a_batch_naming_another_device_than_its_subject_is_rejected() -> None:
    batch = TelemetryBatch(device_id="dev-2", batch_id="b1", records=(record("r1"),))
    verdict = admit(SUBJECT, codec.encode(batch))
    assert isinstance(verdict, Rejected) and verdict.reason == "device_mismatch"


def test_records_with_inconsistent_histograms_are_dropped_from_an_admitted_batch() -> None:
    good, bad = record("r1"), record("r2", latency_ms_buckets=(1, 2))
    verdict = admit(
        SUBJECT, codec.encode(TelemetryBatch(device_id="dev-1", batch_id="b1", records=(good, bad)))
    )
    assert isinstance(verdict, Admitted)
    assert verdict.batch.records == (good,) and verdict.invalid_records == 1


def test_ingest_metrics_count_rounds_and_average_the_rate_over_the_window() -> None:
    now = [100.0]
    metrics = IngestMetrics(monotonic=lambda: now[0])
    batch = TelemetryBatch(device_id="dev-1", batch_id="b1", records=(record("r1"), record("r2")))
    outcome = RoundOutcome(
        verdicts=[Admitted(batch, 1), Rejected("malformed", "x"), Rejected("device_mismatch", "y")],
        inserted=150,
        duplicates=2,
    )
    metrics.observe_round(outcome, pending_messages=7, lag_s=0.25)
    now[0] += 5.0
    metrics.observe_round(RoundOutcome(verdicts=[], inserted=50, duplicates=0), pending_messages=3, lag_s=0.5)
    lines = metrics.render().splitlines()
    assert "edgefabric_telemetry_records_ingested_total 200" in lines
    assert "edgefabric_telemetry_records_duplicate_total 2" in lines
    assert 'edgefabric_telemetry_rejected_total{reason="malformed"} 1' in lines
    assert 'edgefabric_telemetry_rejected_total{reason="device_mismatch"} 1' in lines
    assert 'edgefabric_telemetry_rejected_total{reason="invalid_record"} 1' in lines
    assert "edgefabric_telemetry_ingest_records_per_second 20.0" in lines  # 200 records / 10 s
    assert "edgefabric_telemetry_consumer_pending_messages 3" in lines
    assert "edgefabric_telemetry_consumer_lag_seconds 0.500" in lines
    now[0] += 6.0  # the first round left the window
    assert metrics.records_per_s() == pytest.approx(5.0)
    metrics.observe_idle()
    assert "edgefabric_telemetry_consumer_pending_messages 0" in metrics.render().splitlines()
