"""Token-bucket rate limits per client IP and per identity, with a stricter bucket for sensitive paths.

`TokenBucketLimiter` is plain logic over a monotonic clock (tests pass a fake one). Each key (an IP
or a token id) has a bucket of `burst` tokens, refilled continuously at `per_s`; a request takes one.
A refused request learns how long until a token is available: the `Retry-After` of the 429.

`RateLimitMiddleware` runs twice in the app: once before authentication keyed by client IP (so
guessing tokens is throttled too), once after it keyed by the token id.

Invariants:
- A bucket that refuses a request takes nothing from it, so a client that waits `Retry-After` gets in.
- Memory is bounded: at most `max_keys` buckets; the least recently used is dropped (it restarts full).
- The limits are in-process: one control plane instance, one set of buckets.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import Literal

from litestar.types import ASGIApp, Receive, Scope, Send

from control_plane.auth.schemas import Identity
from control_plane.config import RateLimit
from control_plane.errors import RateLimitedError

KeyKind = Literal["ip", "identity"]


class TokenBucketLimiter:
    def __init__(self, limit: RateLimit, clock: Callable[[], float], *, max_keys: int = 10_000) -> None:
        self.limit = limit
        self._clock = clock
        self._max_keys = max_keys
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # key -> (tokens, at)

    def acquire(self, key: str) -> float:
        """Take one token for `key`: 0.0 if admitted, else the seconds until one is available."""
        now = self._clock()
        tokens, at = self._buckets.pop(key, (float(self.limit.burst), now))
        tokens = min(float(self.limit.burst), tokens + (now - at) * self.limit.per_s)
        wait_s = 0.0
        if tokens >= 1.0:
            tokens -= 1.0
        else:
            wait_s = (1.0 - tokens) / self.limit.per_s
        self._buckets[key] = (tokens, now)
        if len(self._buckets) > self._max_keys:
            self._buckets.popitem(last=False)
        return wait_s


class RateLimitMiddleware:
    """Refuses a request with `RateLimitedError` (429 + Retry-After) when its key's bucket is empty."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        key_kind: KeyKind,
        limiter: TokenBucketLimiter,
        sensitive_limiter: TokenBucketLimiter,
        sensitive_paths: tuple[str, ...],
    ) -> None:
        self.app = app
        self._key_kind = key_kind
        self._limiter = limiter
        self._sensitive_limiter = sensitive_limiter
        self._sensitive_paths = sensitive_paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        key = self._key(scope)
        if key is not None:
            self._charge(self._limiter, key, f"per {self._key_kind}")
            if scope["path"].startswith(self._sensitive_paths):
                self._charge(self._sensitive_limiter, key, f"per {self._key_kind}, sensitive path")
        await self.app(scope, receive, send)

    def _key(self, scope: Scope) -> str | None:
        if self._key_kind == "ip":
            client = scope.get("client")
            return client[0] if client else "unknown"
        user = scope.get("user")
        return user.token_id if isinstance(user, Identity) else None

    @staticmethod
    def _charge(limiter: TokenBucketLimiter, key: str, bucket: str) -> None:
        wait_s = limiter.acquire(key)
        if wait_s > 0.0:
            raise RateLimitedError(bucket, wait_s)
