"""`TimestampRefresher`: the background worker that keeps the published TUF repository valid.

Every `check_interval_s` it calls `ReleaseService.keep_fresh`: the timestamp (and, about every 45
days, the targets) is re-signed once less than half of its lifetime is left, and whatever is
unpublished goes to the Object Store. Its first check runs at start, so a restarted control plane
republishes at once.

Invariants: while it runs, devices never see an expired timestamp from this control plane (the
check interval is far below half the timestamp lifetime, at least 12 hours); a failed check (broker
down, keys missing) is logged and retried at the next interval, never ends the loop; `stop` cancels
the loop and waits for it.
"""

from __future__ import annotations

import asyncio
import logging

from control_plane.errors import ControlPlaneError
from control_plane.releases.services import ReleaseService
from control_plane.tasks import cancel_and_wait

logger = logging.getLogger(__name__)


class TimestampRefresher:
    def __init__(self, releases: ReleaseService, *, check_interval_s: float) -> None:
        self._releases = releases
        self._check_interval_s = check_interval_s
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="tuf-timestamp-refresh")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            await cancel_and_wait(task)

    async def _run(self) -> None:
        while True:
            try:
                await self._releases.keep_fresh()
            except ControlPlaneError as e:
                logger.warning("TUF refresh failed (retrying in %g s): %s", self._check_interval_s, e)
            await asyncio.sleep(self._check_interval_s)
