"""Ending helper tasks without swallowing the caller's own cancellation.

`task.cancel()` then `with suppress(CancelledError): await task` has a trap: when the caller is
itself cancelled while it waits there, its CancelledError is swallowed with the task's, and it
carries on as if nothing had happened. A loop written that way can never be stopped (an agent's
shutdown hung on exactly this). These helpers tell the two apart with `Task.cancelling()`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable

log = logging.getLogger("modelfleet.tasks")


def _caller_is_cancelled() -> bool:
    current = asyncio.current_task()
    return current is not None and current.cancelling() > 0


async def cancel_and_wait(*tasks: asyncio.Future | None) -> None:
    """Cancel `tasks` and wait until they end; their own errors are dropped, the caller's not."""
    live = [task for task in tasks if task is not None]
    for task in live:
        task.cancel()
    for task in live:
        try:
            await task
        except asyncio.CancelledError:
            if _caller_is_cancelled():
                raise
        except Exception:  # the task's own failure, on its way out: nothing to act on
            log.debug("task %r ended with an error while cancelled", task, exc_info=True)


async def wait_quietly(task: asyncio.Future, timeout: float) -> bool:
    """Give `task` up to `timeout` seconds to end by itself (it is not cancelled); True if it did."""
    done, _ = await asyncio.wait({task}, timeout=timeout)
    if task in done and not task.cancelled():
        task.exception()  # retrieved, so asyncio does not warn about it
    return bool(done)


async def cancel_within(tasks: Iterable[asyncio.Task], grace: float) -> list[asyncio.Task]:
    """Cancel `tasks` and wait up to `grace` seconds; returns those that still have not ended.

    For shutdown paths that must finish even if a task misbehaves and ignores cancellation.
    """
    pending = [task for task in tasks if not task.done()]
    for task in pending:
        task.cancel()
    if not pending:
        return []
    _, still_running = await asyncio.wait(pending, timeout=grace)
    for task in pending:
        if task.done() and not task.cancelled():
            task.exception()
    return [task for task in pending if task in still_running]
