"""Ending helper tasks must never swallow the caller's own cancellation (a shutdown hung on it)."""

from __future__ import annotations

import asyncio

import pytest

from modules.tasks import cancel_and_wait, cancel_within, wait_quietly


async def _slow_to_stop(stopping: asyncio.Event, release: asyncio.Event) -> None:
    """A task that needs a moment to clean up once cancelled, as a module's stop does."""
    try:
        await asyncio.sleep(3600)
    except asyncio.CancelledError:
        stopping.set()
        await release.wait()
        raise


async def test_a_cancelled_caller_stays_cancelled_while_it_waits_for_a_child():
    stopping, release = asyncio.Event(), asyncio.Event()
    child = asyncio.create_task(_slow_to_stop(stopping, release))
    after_the_wait: list[str] = []

    async def caller() -> None:
        await asyncio.sleep(0)
        await cancel_and_wait(child)
        after_the_wait.append("carried on")  # what a swallowed cancellation leads to
        await asyncio.sleep(3600)

    outer = asyncio.create_task(caller())
    await stopping.wait()
    outer.cancel()  # the caller is told to stop while its child is still cleaning up
    await asyncio.sleep(0)
    release.set()

    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(outer, 10)
    assert outer.cancelled() and after_the_wait == []
    assert child.cancelled()


async def test_cancel_and_wait_returns_when_only_the_children_are_cancelled():
    async def fails_on_the_way_out() -> None:
        try:
            await asyncio.sleep(3600)
        finally:
            raise RuntimeError("cleanup failed")

    quiet = asyncio.create_task(asyncio.sleep(3600))
    noisy = asyncio.create_task(fails_on_the_way_out())
    await asyncio.sleep(0)

    await cancel_and_wait(quiet, None, noisy)

    assert quiet.cancelled() and noisy.done()


async def test_wait_quietly_neither_cancels_nor_raises_and_passes_cancellation_on():
    slow = asyncio.create_task(asyncio.sleep(3600))
    assert not await wait_quietly(slow, 0.05)
    assert not slow.done()

    failed = asyncio.create_task(asyncio.sleep(0, result=None))
    await asyncio.sleep(0.01)
    assert await wait_quietly(failed, 1)

    waiter = asyncio.create_task(wait_quietly(slow, 3600))
    await asyncio.sleep(0.01)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert not slow.done()
    slow.cancel()


async def test_cancel_within_gives_up_on_a_task_that_ignores_cancellation():
    release = asyncio.Event()

    async def stubborn() -> None:
        while not release.is_set():
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                continue  # the bug this guards against

    polite = asyncio.create_task(asyncio.sleep(3600))
    rude = asyncio.create_task(stubborn())
    await asyncio.sleep(0)

    left = await asyncio.wait_for(cancel_within([polite, rude], 0.2), 10)

    assert left == [rude] and polite.cancelled()
    release.set()
    rude.cancel()
    await asyncio.wait_for(rude, 10)
