"""The telemetry recorder: per-interval aggregates, driven by a fake clock."""

from __future__ import annotations

import math
import threading
from datetime import UTC, datetime

import pytest

from edge_agent.telemetry.recorder import DEFAULT_LATENCY_MS_BOUNDS, TelemetryRecorder
from protocols import codec
from protocols.messages import TelemetryBatch, TelemetryRecord

T0 = 1_700_000_040.0  # a minute boundary


class FakeClock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def recorder(clock: FakeClock) -> TelemetryRecorder:
    return TelemetryRecorder(clock=clock, interval_s=60.0)


def only(records: list[TelemetryRecord]) -> TelemetryRecord:
    assert len(records) == 1, records
    return records[0]


def test_open_interval_is_not_drained_until_it_closes(recorder: TelemetryRecorder, clock: FakeClock) -> None:
    recorder.record("digits", "1.0.0", latency_ms=3.0, is_error=False)
    clock.now = T0 + 59.999
    assert recorder.drain() == []
    clock.now = T0 + 60.0
    record = only(recorder.drain())
    assert record.count == 1
    assert record.minute_start == datetime.fromtimestamp(T0, UTC)
    assert record.minute_start.tzinfo is not None
    assert recorder.drain() == []  # drained aggregates are forgotten


def test_requests_split_at_interval_boundaries(recorder: TelemetryRecorder, clock: FakeClock) -> None:
    for offset in (0.0, 30.0, 59.9, 60.0, 119.0, 180.5):
        clock.now = T0 + offset
        recorder.record("digits", "1.0.0", latency_ms=1.0, is_error=False)
    records = recorder.drain(now=T0 + 180.0)
    assert [(r.minute_start.timestamp() - T0, r.count) for r in records] == [(0.0, 3), (60.0, 2)]
    assert [r.count for r in recorder.drain(force=True)] == [1]


def test_force_drains_the_open_interval(recorder: TelemetryRecorder) -> None:
    recorder.record("digits", "1.0.0", latency_ms=1.0, is_error=True)
    record = only(recorder.drain(force=True))
    assert (record.count, record.error_count) == (1, 1)


def test_model_version_and_mode_are_aggregated_separately(
    recorder: TelemetryRecorder, clock: FakeClock
) -> None:
    recorder.record("digits", "1.0.0", latency_ms=1.0, is_error=False)
    recorder.record("digits", "1.0.0", latency_ms=1.0, is_error=False)
    recorder.record("digits", "1.1.0", latency_ms=1.0, is_error=False)
    recorder.record("digits", "1.1.0", latency_ms=1.0, is_error=False, mode="shadow")
    recorder.record("faces", "2.0.0", latency_ms=1.0, is_error=False)
    records = recorder.drain(now=T0 + 60)
    assert [(r.model, r.version, r.mode, r.count) for r in records] == [
        ("digits", "1.0.0", "active", 2),
        ("digits", "1.1.0", "active", 1),
        ("digits", "1.1.0", "shadow", 1),
        ("faces", "2.0.0", "active", 1),
    ]
    assert len({r.record_id for r in records}) == len(records)


def test_latency_buckets_are_cumulative_with_an_inf_bucket_last(clock: FakeClock) -> None:
    recorder = TelemetryRecorder(clock=clock, latency_ms_bounds=(1, 2, 5))
    for latency_ms in (0.0, 1.0, 1.5, 2.0, 4.9, 5.0, 5.1, 7000.0):
        recorder.record("digits", "1.0.0", latency_ms=latency_ms, is_error=False)
    record = only(recorder.drain(force=True))
    assert record.latency_ms_bounds == (1.0, 2.0, 5.0)
    # <=1: 0, 1 | <=2: +1.5, 2 | <=5: +4.9, 5 | +inf: +5.1, 7000
    assert record.latency_ms_buckets == (2, 4, 6, 8)
    assert record.latency_ms_buckets[-1] == record.count
    assert record.latency_ms_sum == pytest.approx(7019.5)


def test_failed_requests_count_in_the_latency_histogram(recorder: TelemetryRecorder) -> None:
    recorder.record("digits", "1.0.0", latency_ms=3.0, is_error=True)
    recorder.record("digits", "1.0.0", latency_ms=300.0, is_error=False)
    record = only(recorder.drain(force=True))
    assert record.latency_ms_bounds == DEFAULT_LATENCY_MS_BOUNDS
    assert record.latency_ms_buckets[-1] == record.count == 2
    assert record.error_count == 1


def test_output_histogram_grows_as_classes_appear(recorder: TelemetryRecorder) -> None:
    for top1 in (2, 0, 2, 7, None):
        recorder.record("digits", "1.0.0", latency_ms=1.0, is_error=top1 is None, top1=top1)
    assert only(recorder.drain(force=True)).output_histogram == (1, 0, 2, 0, 0, 0, 0, 1)


def test_input_moments_are_mean_and_std_across_requests(recorder: TelemetryRecorder) -> None:
    for summary in ([1.0, 10.0], [3.0, 10.0], [5.0, 40.0]):
        recorder.record("digits", "1.0.0", latency_ms=1.0, is_error=False, input_mean=summary)
    recorder.record("digits", "1.0.0", latency_ms=1.0, is_error=False)  # no summary: not in the moments
    record = only(recorder.drain(force=True))
    assert record.input_mean == pytest.approx((3.0, 20.0))
    assert record.input_std == pytest.approx((math.sqrt(8 / 3), math.sqrt(200)))


def test_non_finite_input_summaries_are_left_out_of_the_moments(recorder: TelemetryRecorder) -> None:
    for summary in ([2.0, math.nan], [4.0, math.inf]):
        recorder.record("digits", "1.0.0", latency_ms=1.0, is_error=False, input_mean=summary)
    record = only(recorder.drain(force=True))
    assert record.input_mean == (3.0, 0.0)
    assert record.input_std == (1.0, 0.0)
    wire = codec.device_event_decoder.decode(
        codec.encode(TelemetryBatch(device_id="dev-1", batch_id="b", records=(record,)))
    )
    assert isinstance(wire, TelemetryBatch) and wire.records == (record,)  # no NaN reached the JSON


def test_shadow_agreement_is_the_fraction_of_requests_that_reported_it(recorder: TelemetryRecorder) -> None:
    for agrees in (True, True, False, True, None):
        recorder.record(
            "digits", "1.1.0", latency_ms=1.0, is_error=False, mode="shadow", shadow_agreement=agrees
        )
    recorder.record("digits", "1.0.0", latency_ms=1.0, is_error=False)
    active, shadow = sorted(recorder.drain(force=True), key=lambda r: r.mode)
    assert shadow.shadow_agreement == 0.75
    assert active.shadow_agreement is None


def test_drained_records_survive_the_wire(recorder: TelemetryRecorder) -> None:
    recorder.record("digits", "1.0.0", latency_ms=4.2, is_error=False, top1=3, input_mean=[0.5])
    record = only(recorder.drain(force=True))
    batch = TelemetryBatch(device_id="dev-1", batch_id="b-1", records=(record,))
    assert codec.device_event_decoder.decode(codec.encode(batch)) == batch


def test_concurrent_workers_lose_no_requests(recorder: TelemetryRecorder) -> None:
    def work() -> None:
        for i in range(2000):
            recorder.record("digits", "1.0.0", latency_ms=float(i % 50), is_error=i % 10 == 0, top1=i % 3)

    workers = [threading.Thread(target=work) for _ in range(8)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=30)
    record = only(recorder.drain(force=True))
    assert (record.count, record.error_count, sum(record.output_histogram)) == (16000, 1600, 16000)
    assert record.latency_ms_buckets[-1] == 16000


@pytest.mark.parametrize(
    ("latency_ms", "top1"), [(-1.0, None), (math.nan, None), (math.inf, None), (1.0, -1)]
)
def test_impossible_measurements_are_refused(
    recorder: TelemetryRecorder, latency_ms: float, top1: int | None
) -> None:
    with pytest.raises(ValueError):
        recorder.record("digits", "1.0.0", latency_ms=latency_ms, is_error=False, top1=top1)
    assert recorder.drain(force=True) == []


@pytest.mark.parametrize("bounds", [(), (1, 1, 2), (5, 2), (1, math.inf)])
def test_latency_bounds_must_be_finite_and_increasing(bounds: tuple[float, ...]) -> None:
    with pytest.raises(ValueError, match="latency_ms_bounds"):
        TelemetryRecorder(latency_ms_bounds=bounds)
