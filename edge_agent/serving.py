"""Local inference: the models this device serves, with dynamic batching and shadow runs.

Invariants:
- Inference never runs on the event loop: sessions run in a thread pool.
- Swapping a model (`activate`) replaces one dict entry after the new session is loaded and
  tested; requests in flight finish on the session they started with, so a swap drops nothing.
- With a dynamic batch dimension, concurrent requests for a model are merged into one batch of
  at most `max_batch_size` samples, waiting at most `max_queue_delay_ms` for company.
- A shadow model runs on a sampled fraction of requests after the answer is sent; its result
  only feeds telemetry (agreement with the active model), never the response.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
from numpy.typing import NDArray

from edge_agent.errors import InvalidInferenceInputError, ModelNotServedError
from hardware_profiles.runtimes import Feeds, InferenceSession
from protocols.manifest import ArtifactManifest
from protocols.messages import RolloutMode

logger = logging.getLogger(__name__)


class Recorder(Protocol):
    """Where per-request statistics go (the telemetry recorder)."""

    def record(
        self,
        model: str,
        version: str,
        *,
        latency_ms: float,
        is_error: bool,
        top1: int | None = None,
        input_mean: list[float] | None = None,
        mode: RolloutMode = "active",
        shadow_agreement: bool | None = None,
    ) -> None: ...


@dataclass
class _Pending:
    feeds: Feeds
    samples: int
    future: asyncio.Future[Feeds]


@dataclass
class ServedModel:
    """One loaded artifact."""

    name: str
    manifest: ArtifactManifest
    session: InferenceSession
    is_batchable: bool = field(init=False)

    def __post_init__(self) -> None:
        specs = (*self.session.inputs, *self.session.outputs)
        self.is_batchable = all(spec.shape[:1] == (None,) for spec in specs)

    @property
    def version(self) -> str:
        return self.manifest.version

    def check_inputs(self, feeds: dict[str, Any]) -> tuple[Feeds, int]:
        """Feeds cast to the model's dtypes, and the sample count; or `InvalidInferenceInputError`."""
        expected = {spec.name: spec for spec in self.session.inputs}
        if set(feeds) != set(expected):
            raise InvalidInferenceInputError(
                self.name, f"inputs must be {sorted(expected)}, got {sorted(feeds)}"
            )
        checked: Feeds = {}
        samples = set()
        for name, value in feeds.items():
            spec = expected[name]
            array = np.asarray(value)
            if array.dtype != spec.dtype and not np.can_cast(array.dtype, spec.dtype, casting="same_kind"):
                raise InvalidInferenceInputError(
                    self.name, f"{name}: {array.dtype} values for a {spec.dtype} input"
                )
            try:
                array = array.astype(spec.dtype, copy=False)
            except (TypeError, ValueError) as e:
                raise InvalidInferenceInputError(self.name, f"{name}: not {spec.dtype} numbers") from e
            if array.ndim != len(spec.shape) or array.ndim == 0:
                raise InvalidInferenceInputError(
                    self.name, f"{name}: shape {array.shape}, model takes {spec.shape}"
                )
            fixed = zip(array.shape, spec.shape, strict=True)
            if any(want is not None and have != want for have, want in fixed):
                raise InvalidInferenceInputError(
                    self.name, f"{name}: shape {array.shape}, model takes {spec.shape}"
                )
            checked[name] = array
            samples.add(array.shape[0])
        if len(samples) != 1:
            raise InvalidInferenceInputError(self.name, "inputs disagree on the number of samples")
        return checked, samples.pop()


class _Batcher:
    """Merges concurrent requests for one batchable model into batches."""

    def __init__(self, run: Callable[[Feeds], Any], max_batch_size: int, max_queue_delay_ms: float) -> None:
        self._run = run
        self._max_batch_size = max_batch_size
        self._max_delay_s = max_queue_delay_ms / 1000
        self._queue: asyncio.Queue[_Pending] = asyncio.Queue()
        self._in_flight: set[asyncio.Task[None]] = set()
        self._worker = asyncio.create_task(self._serve())

    async def submit(self, feeds: Feeds, samples: int) -> Feeds:
        future: asyncio.Future[Feeds] = asyncio.get_running_loop().create_future()
        await self._queue.put(_Pending(feeds, samples, future))
        return await future

    async def _serve(self) -> None:
        """Collect a batch (same per-sample shapes, at most `max_batch_size` samples), start it,
        collect the next while it runs: several batches may be in flight on the worker pool."""
        carried: _Pending | None = None
        while True:
            first = carried or await self._queue.get()
            carried = None
            batch, size = [first], first.samples
            deadline = time.monotonic() + self._max_delay_s
            while size < self._max_batch_size:
                remaining = deadline - time.monotonic()
                try:
                    candidate = (
                        self._queue.get_nowait()
                        if remaining <= 0
                        else await asyncio.wait_for(self._queue.get(), remaining)
                    )
                except (asyncio.QueueEmpty, TimeoutError):
                    break
                if size + candidate.samples > self._max_batch_size or not _same_sample_shape(
                    first, candidate
                ):
                    carried = candidate
                    break
                batch.append(candidate)
                size += candidate.samples
            task = asyncio.create_task(self._run_batch(batch))
            self._in_flight.add(task)
            task.add_done_callback(self._in_flight.discard)

    async def _run_batch(self, batch: list[_Pending]) -> None:
        try:
            merged = {
                name: np.concatenate([p.feeds[name] for p in batch]) if len(batch) > 1 else value
                for name, value in batch[0].feeds.items()
            }
            outputs: Feeds = await self._run(merged)
        except Exception as e:  # the runtime's own error goes to every waiting request
            for pending in batch:
                if not pending.future.done():
                    pending.future.set_exception(e)
            return
        start = 0
        for pending in batch:
            end = start + pending.samples
            if not pending.future.done():
                pending.future.set_result({k: v[start:end] for k, v in outputs.items()})
            start = end

    async def close(self) -> None:
        self._worker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._worker


def _same_sample_shape(a: _Pending, b: _Pending) -> bool:
    return all(a.feeds[name].shape[1:] == b.feeds[name].shape[1:] for name in a.feeds)


def _top1(outputs: Feeds) -> int | None:
    first = next(iter(outputs.values()))
    if first.ndim < 2 or first.shape[-1] < 2:
        return None
    return int(np.asarray(first).reshape(len(first), -1)[0].argmax())


class ModelServer:
    """The served models of this agent (see module invariants)."""

    def __init__(
        self,
        *,
        recorder: Recorder | None = None,
        max_batch_size: int = 8,
        max_queue_delay_ms: float = 2.0,
        workers: int = 4,
        shadow_sample_fraction: float = 0.1,
    ) -> None:
        self._recorder = recorder
        self._max_batch_size = max_batch_size
        self._max_queue_delay_ms = max_queue_delay_ms
        self._shadow_fraction = shadow_sample_fraction
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="inference")
        self._models: dict[str, ServedModel] = {}
        self._shadows: dict[str, ServedModel] = {}
        self._batchers: dict[int, _Batcher] = {}
        self._background: set[asyncio.Task[None]] = set()

    def served(self) -> list[ServedModel]:
        return [self._models[name] for name in sorted(self._models)]

    def get(self, name: str) -> ServedModel:
        model = self._models.get(name)
        if model is None:
            raise ModelNotServedError(name, sorted(self._models))
        return model

    def shadow_of(self, name: str) -> ServedModel | None:
        return self._shadows.get(name)

    async def activate(self, model: ServedModel) -> None:
        """Serve `model` under its name from the next request on."""
        old = self._models.get(model.name)
        self._models[model.name] = model
        if old is not None and old is not model:
            await self._drop_batcher(old)

    async def set_shadow(self, name: str, shadow: ServedModel | None) -> None:
        old = self._shadows.pop(name, None)
        if shadow is not None:
            self._shadows[name] = shadow
        if old is not None:
            await self._drop_batcher(old)

    async def _drop_batcher(self, model: ServedModel) -> None:
        batcher = self._batchers.pop(id(model.session), None)
        if batcher is not None:
            await batcher.close()

    async def _run(self, model: ServedModel, feeds: Feeds, samples: int) -> Feeds:
        if model.is_batchable and self._max_batch_size > 1:
            batcher = self._batchers.get(id(model.session))
            if batcher is None:
                batcher = _Batcher(
                    lambda merged: self._in_thread(model, merged),
                    self._max_batch_size,
                    self._max_queue_delay_ms,
                )
                self._batchers[id(model.session)] = batcher
            return await batcher.submit(feeds, samples)
        return await self._in_thread(model, feeds)

    async def _in_thread(self, model: ServedModel, feeds: Feeds) -> Feeds:
        return await asyncio.get_running_loop().run_in_executor(self._executor, model.session.run, feeds)

    async def infer(self, name: str, feeds: dict[str, Any]) -> tuple[ServedModel, Feeds]:
        """Run one request on the active model of `name`; returns the model that answered."""
        model = self.get(name)
        checked, samples = model.check_inputs(feeds)
        started = time.perf_counter()
        try:
            outputs = await self._run(model, checked, samples)
        except Exception:
            self._record(model, started, is_error=True, feeds=checked)
            raise
        self._record(model, started, is_error=False, feeds=checked, outputs=outputs)
        shadow = self._shadows.get(name)
        if shadow is not None and random.random() < self._shadow_fraction:
            task = asyncio.create_task(self._run_shadow(shadow, checked, samples, outputs))
            self._background.add(task)
            task.add_done_callback(self._background.discard)
        return model, outputs

    async def _run_shadow(self, shadow: ServedModel, feeds: Feeds, samples: int, active: Feeds) -> None:
        started = time.perf_counter()
        try:
            outputs = await self._run(shadow, feeds, samples)
        except Exception as e:  # a failing shadow only shows in telemetry
            logger.info("shadow %s %s failed: %s", shadow.name, shadow.version, e)
            self._record(shadow, started, is_error=True, feeds=feeds, mode="shadow")
            return
        agrees = _top1(outputs) == _top1(active)
        self._record(
            shadow,
            started,
            is_error=False,
            feeds=feeds,
            outputs=outputs,
            mode="shadow",
            shadow_agreement=agrees,
        )

    def _record(
        self,
        model: ServedModel,
        started: float,
        *,
        is_error: bool,
        feeds: Feeds,
        outputs: Feeds | None = None,
        mode: RolloutMode = "active",
        shadow_agreement: bool | None = None,
    ) -> None:
        if self._recorder is None:
            return
        first_input: NDArray[Any] = next(iter(feeds.values()))
        self._recorder.record(
            model.name,
            model.version,
            latency_ms=(time.perf_counter() - started) * 1000,
            is_error=is_error,
            top1=_top1(outputs) if outputs is not None else None,
            input_mean=[float(np.mean(first_input))] if first_input.dtype.kind == "f" else None,
            mode=mode,
            shadow_agreement=shadow_agreement,
        )

    async def close(self) -> None:
        for task in list(self._background):
            task.cancel()
        for batcher in self._batchers.values():
            await batcher.close()
        self._batchers.clear()
        self._executor.shutdown(wait=False, cancel_futures=True)
