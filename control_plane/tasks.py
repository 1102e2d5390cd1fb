"""Stopping background workers' tasks for sure (every `BackgroundWorker.stop` uses it).

Python 3.11's `asyncio.wait_for` can swallow a cancellation that arrives just as the awaited
future completes; a task parked there would then run on, and awaiting it after one `cancel()`
would hang the app's shutdown. `cancel_and_wait` re-cancels until the task is done.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

logger = logging.getLogger(__name__)

_RETRY_S = 0.1
_ATTEMPTS = 100


async def cancel_and_wait(task: asyncio.Task[None]) -> None:
    """Cancel `task` and wait for it to end (at most `_ATTEMPTS * _RETRY_S` seconds, then give up)."""
    for _ in range(_ATTEMPTS):
        if task.done():
            break
        task.cancel()
        await asyncio.wait({task}, timeout=_RETRY_S)
    else:
        logger.warning("task %s did not stop after %d cancellations", task.get_name(), _ATTEMPTS)
        return
    with contextlib.suppress(asyncio.CancelledError):
        exception = task.exception()
        if exception is not None:
            logger.warning("task %s had failed: %r", task.get_name(), exception)
