"""Dynamic batching: concurrent requests share one ONNX Runtime call.

Small models spend most of a call on fixed overhead, so eight one-row requests cost about as much
as one eight-row request. A batch leaves when it is full, when its oldest request has waited
`max_wait_ms` for company, or at once when a running batch ends: requests queued behind it have
waited already, and holding them longer would leave the model idle for nothing. Requests
whose inputs cannot be stacked (different trailing shapes or dtypes) go in separate batches.
Up to `max_in_flight` batches run at once, one per inference worker.

All bookkeeping is callbacks on the event loop (no collector task, no task per batch): on a
small model the batcher's own overhead decides whether batching pays at all.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from functools import partial

import numpy as np

from ._errors import RunFailedError

log = logging.getLogger("modelfleet.scoring")

Feeds = dict[str, np.ndarray]
RunBatch = Callable[[Feeds], dict[str, np.ndarray]]


@dataclass
class _Pending:
    feeds: Feeds
    rows: int
    key: tuple
    arrived: float
    # Queued while every worker was busy: it goes as soon as one frees, without waiting more.
    queued_behind_a_batch: bool
    future: asyncio.Future = field(repr=False)


def _stack_key(feeds: Feeds) -> tuple:
    return tuple(sorted((name, a.shape[1:], a.dtype.str) for name, a in feeds.items()))


class DynamicBatcher:
    def __init__(
        self,
        run_batch: RunBatch,
        *,
        max_batch_size: int,
        max_wait_ms: float,
        executor: Executor,
        max_in_flight: int,
        on_batch: Callable[[int], None] = lambda rows: None,
    ) -> None:
        self._run_batch = run_batch
        self._max_rows = max_batch_size
        self._max_wait = max_wait_ms / 1000.0
        self._executor = executor
        self._free_workers = max_in_flight
        self._on_batch = on_batch
        self._pending: collections.deque[_Pending] = collections.deque()
        self._pending_rows = 0
        self._wakeup: asyncio.Handle | None = None
        self._wakeup_is_soon = False
        self._running: set[asyncio.Future] = set()
        self._closed = False

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()

    async def close(self) -> None:
        self._closed = True
        if self._wakeup is not None:
            self._wakeup.cancel()
        if self._running:
            await asyncio.gather(*self._running, return_exceptions=True)
        while self._pending:
            item = self._pending.popleft()
            if not item.future.done():
                item.future.set_exception(RunFailedError("scoring host is shutting down"))

    async def submit(self, feeds: Feeds) -> dict[str, np.ndarray]:
        if self._closed:
            raise RunFailedError("scoring host is shutting down")
        rows = next(iter(feeds.values())).shape[0] if feeds else 1
        loop = self._loop
        future = loop.create_future()
        item = _Pending(feeds, rows, _stack_key(feeds), loop.time(), self._free_workers == 0, future)
        self._pending.append(item)
        self._pending_rows += rows
        no_timer_or_full = self._wakeup is None or self._pending_rows >= self._max_rows
        if self._free_workers and not self._wakeup_is_soon and no_timer_or_full:
            if self._wakeup is not None:
                self._wakeup.cancel()  # a timer, and the batch just filled up
            # Not at once: requests parsed in this same turn of the loop may still join.
            self._wakeup = loop.call_soon(self._pump)
            self._wakeup_is_soon = True
        return await future

    def _pump(self) -> None:
        """Send every batch that may go now; otherwise wake up when the oldest one is due."""
        if self._wakeup is not None:
            self._wakeup.cancel()
            self._wakeup = None
            self._wakeup_is_soon = False
        while self._free_workers and self._pending:
            first = self._pending[0]
            if first.future.done():  # timed out or cancelled while queued
                self._pending.popleft()
                self._pending_rows -= first.rows
                continue
            due = first.arrived + self._max_wait
            if (
                first.queued_behind_a_batch
                or self._pending_rows >= self._max_rows
                or self._loop.time() >= due
            ):
                self._dispatch()
            else:
                self._wakeup = self._loop.call_at(due, self._pump)
                return

    def _dispatch(self) -> None:
        first = self._pending.popleft()
        batch, rows = [first], first.rows
        while self._pending and rows < self._max_rows:
            candidate = self._pending[0]
            if candidate.future.done():
                self._pending.popleft()
                self._pending_rows -= candidate.rows
                continue
            if candidate.key != first.key or rows + candidate.rows > self._max_rows:
                break
            batch.append(self._pending.popleft())
            rows += candidate.rows
        self._pending_rows -= rows
        try:
            self._on_batch(rows)
            running = self._loop.run_in_executor(self._executor, self._run_merged, batch, rows)
        except Exception as exc:  # e.g. the executor already shut down: fail these, keep the slot
            log.exception("could not start a batch of %d requests", len(batch))
            for item in batch:
                if not item.future.done():
                    item.future.set_exception(RunFailedError(f"could not run the model: {exc}"))
            return
        self._free_workers -= 1
        self._running.add(running)
        running.add_done_callback(partial(self._finished, batch))

    def _finished(self, batch: list[_Pending], running: asyncio.Future) -> None:
        self._running.discard(running)
        self._free_workers += 1
        error = running.exception() if not running.cancelled() else RunFailedError("inference cancelled")
        outputs = None if error is not None else running.result()
        for i, item in enumerate(batch):
            if item.future.done():
                continue
            if outputs is None:
                item.future.set_exception(error)
            else:
                item.future.set_result(outputs[i])
        for item in self._pending:  # they queued behind this batch
            item.queued_behind_a_batch = True
        if not self._closed:
            self._pump()

    def _run_merged(self, batch: list[_Pending], rows: int) -> list[dict[str, np.ndarray]]:
        if len(batch) == 1:
            return [self._run_batch(batch[0].feeds)]
        merged = {
            name: np.concatenate([item.feeds[name] for item in batch], axis=0) for name in batch[0].feeds
        }
        outputs = self._run_batch(merged)
        if any(value.ndim == 0 or value.shape[0] != rows for value in outputs.values()):
            # The model does not keep the batch axis on every output: run them one by one.
            log.warning("outputs are not batch-aligned; running the %d requests singly", len(batch))
            return [self._run_batch(item.feeds) for item in batch]
        bounds = np.cumsum([item.rows for item in batch])[:-1]
        split = {name: np.split(value, bounds, axis=0) for name, value in outputs.items()}
        return [{name: parts[i] for name, parts in split.items()} for i in range(len(batch))]
