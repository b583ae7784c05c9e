"""Dynamic batching: concurrent requests share one ONNX Runtime call.

Small models spend most of a call on fixed overhead, so eight one-row requests cost about as much
as one eight-row request. Requests wait at most `max_wait_ms` for company; requests whose inputs
cannot be stacked (different trailing shapes or dtypes) go in separate batches. Several batches
may be in flight at once, up to the number of inference workers.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field

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
        self._slots = asyncio.Semaphore(max_in_flight)
        self._on_batch = on_batch
        self._pending: collections.deque[_Pending] = collections.deque()
        self._arrived = asyncio.Event()
        self._collector: asyncio.Task | None = None
        self._running: set[asyncio.Task] = set()

    def start(self) -> None:
        self._collector = asyncio.create_task(self._collect(), name="modelfleet-batcher")

    async def close(self) -> None:
        if self._collector is not None:
            self._collector.cancel()
            await asyncio.gather(self._collector, return_exceptions=True)
        for task in list(self._running):
            await asyncio.gather(task, return_exceptions=True)
        for item in self._pending:
            if not item.future.done():
                item.future.set_exception(RunFailedError("scoring host is shutting down"))

    async def submit(self, feeds: Feeds) -> dict[str, np.ndarray]:
        rows = next(iter(feeds.values())).shape[0] if feeds else 1
        future = asyncio.get_running_loop().create_future()
        self._pending.append(_Pending(feeds, rows, _stack_key(feeds), future))
        self._arrived.set()
        return await future

    async def _collect(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            while not self._pending:
                self._arrived.clear()
                await self._arrived.wait()
            # Waiting for a free slot first lets requests pile up while all workers are busy,
            # which is exactly when batching pays.
            await self._slots.acquire()
            first = self._pending.popleft()
            batch, rows = [first], first.rows
            deadline = loop.time() + self._max_wait
            while rows < self._max_rows:
                if self._pending:
                    candidate = self._pending[0]
                    if candidate.key != first.key or rows + candidate.rows > self._max_rows:
                        break
                    batch.append(self._pending.popleft())
                    rows += candidate.rows
                    continue
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                self._arrived.clear()
                try:
                    await asyncio.wait_for(self._arrived.wait(), remaining)
                except TimeoutError:
                    break
            task = asyncio.create_task(self._execute(batch, rows))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    async def _execute(self, batch: list[_Pending], rows: int) -> None:
        loop = asyncio.get_running_loop()
        try:
            live = [item for item in batch if not item.future.done()]  # timed out meanwhile
            if not live:
                return
            rows = sum(item.rows for item in live)
            try:
                outputs = await loop.run_in_executor(self._executor, self._run_merged, live, rows)
            except Exception as exc:
                for item in live:
                    if not item.future.done():
                        item.future.set_exception(exc)
                return
            for item, result in zip(live, outputs, strict=True):
                if not item.future.done():
                    item.future.set_result(result)
        finally:
            self._slots.release()

    def _run_merged(self, batch: list[_Pending], rows: int) -> list[dict[str, np.ndarray]]:
        self._on_batch(rows)
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
