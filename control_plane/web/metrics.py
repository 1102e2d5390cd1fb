"""Request metrics in the Prometheus text format (version 0.0.4), served at `GET /metrics`.

Exported now: `edgefabric_http_requests_total{method,route,status}` (counter) and
`edgefabric_http_request_duration_seconds{method,route}` (histogram). Other areas add their own
series as a `MetricsSource` (telemetry ingest: records, rejects, queue lag, ingest rate), rendered
after these; nothing is exported before it is measured.

Invariants:
- `route` is the route template (`/api/v1/tokens/{token_id:str}`), never the raw path, so the
  number of series is bounded by the number of routes.
- A request rejected by a middleware (401, 413, 429) is counted with that status. Requests that
  match no route (404 from the router) never reach the middleware stack and are not counted.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Protocol

from litestar import get
from litestar.di import NamedDependency
from litestar.enums import ScopeType
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from control_plane.auth.access import PUBLIC
from control_plane.web.errors import status_of

PROMETHEUS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
DURATION_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

_REQUESTS = "edgefabric_http_requests_total"
_DURATION = "edgefabric_http_request_duration_seconds"


class _Histogram:
    def __init__(self) -> None:
        self.bucket_counts = [0] * len(DURATION_BUCKETS_S)
        self.total_s = 0.0
        self.count = 0

    def observe(self, value_s: float) -> None:
        for i, bound in enumerate(DURATION_BUCKETS_S):
            if value_s <= bound:
                self.bucket_counts[i] += 1
        self.total_s += value_s
        self.count += 1


class MetricsSource(Protocol):
    def render(self) -> str:
        """Complete Prometheus text lines (`# HELP`, `# TYPE`, samples), ending with a newline."""
        ...


class HttpMetrics:
    """In-process request counters and latency histograms, followed by `sources` when rendered."""

    def __init__(self, sources: Sequence[MetricsSource] = ()) -> None:
        self._sources = tuple(sources)
        self._requests: dict[tuple[str, str, int], int] = {}
        self._durations: dict[tuple[str, str], _Histogram] = {}

    def observe(self, *, method: str, route: str, status: int, duration_s: float) -> None:
        key = (method, route, status)
        self._requests[key] = self._requests.get(key, 0) + 1
        self._durations.setdefault((method, route), _Histogram()).observe(duration_s)

    def render(self) -> str:
        lines = [
            f"# HELP {_REQUESTS} HTTP requests answered, by method, route template and status.",
            f"# TYPE {_REQUESTS} counter",
        ]
        for (method, route, status), count in sorted(self._requests.items()):
            lines.append(f"{_REQUESTS}{_labels(method=method, route=route, status=str(status))} {count}")
        lines += [
            f"# HELP {_DURATION} Time to answer an HTTP request, by method and route template.",
            f"# TYPE {_DURATION} histogram",
        ]
        for (method, route), histogram in sorted(self._durations.items()):
            for bound, count in zip(DURATION_BUCKETS_S, histogram.bucket_counts, strict=True):
                lines.append(
                    f"{_DURATION}_bucket{_labels(method=method, route=route, le=repr(bound))} {count}"
                )
            lines.append(
                f"{_DURATION}_bucket{_labels(method=method, route=route, le='+Inf')} {histogram.count}"
            )
            lines.append(f"{_DURATION}_sum{_labels(method=method, route=route)} {histogram.total_s!r}")
            lines.append(f"{_DURATION}_count{_labels(method=method, route=route)} {histogram.count}")
        return "\n".join(lines) + "\n" + "".join(source.render() for source in self._sources)


def _labels(**labels: str) -> str:
    def escape(value: str) -> str:
        return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")

    return "{" + ",".join(f'{name}="{escape(value)}"' for name, value in labels.items()) + "}"


class MetricsMiddleware:
    """Outermost middleware: times every routed HTTP request and records its final status."""

    def __init__(
        self, app: ASGIApp, *, metrics: HttpMetrics, clock: Callable[[], float] = time.perf_counter
    ) -> None:
        self.app = app
        self._metrics = metrics
        self._clock = clock

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP:
            await self.app(scope, receive, send)
            return
        started = self._clock()
        status = 500

        async def send_recording_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_recording_status)
        except Exception as exc:
            status = status_of(exc)  # answered by the app's exception handler, outside this middleware
            raise
        finally:
            self._metrics.observe(
                method=scope["method"],
                route=scope["path_template"],
                status=status,
                duration_s=self._clock() - started,
            )


@get("/metrics", opt=PUBLIC, media_type=PROMETHEUS_CONTENT_TYPE, sync_to_thread=False, tags=["system"])
def serve_metrics(metrics: NamedDependency[HttpMetrics]) -> str:
    """Prometheus scrape endpoint (no authentication; the API binds to loopback by default)."""
    return metrics.render()
