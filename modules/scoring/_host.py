"""The scoring host's lifecycle: load and init() in the background, then serve.

Liveness is green from the first moment; readiness only once init() succeeded. When loading
fails the process stays up with the error on record, so the agent and a person can both see why
instead of watching a crash loop.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from ._auth import KeyAuth
from ._errors import NotReadyError, ScoringTimeoutError
from ._handler import Handler
from ._metrics import ScoringMetrics
from ._settings import ScoringSettings

log = logging.getLogger("modelfleet.scoring")
T = TypeVar("T")


class ScoringHost:
    def __init__(self, settings: ScoringSettings) -> None:
        self.settings = settings
        self.metrics = ScoringMetrics()
        self.executor = ThreadPoolExecutor(
            max_workers=settings.inference_workers, thread_name_prefix="modelfleet-infer"
        )
        keys = [k.get_secret_value() for k in (settings.primary_key, settings.secondary_key) if k]
        self.auth = KeyAuth(keys)
        self.handler = self._make_handler()
        self.state = "loading"
        self.error: str | None = None
        self._loaded = asyncio.Event()
        self._load_task: asyncio.Task | None = None

    def _make_handler(self) -> Handler:
        if self.settings.entry_script is not None:
            from ._entry_script import EntryScriptHandler

            return EntryScriptHandler(self.settings, self.executor, self.metrics)
        from ._zero_code import OnnxModelHandler

        return OnnxModelHandler(self.settings, self.executor, self.metrics)

    @property
    def ready(self) -> bool:
        return self.state == "ready"

    async def start(self) -> None:
        self._load_task = asyncio.create_task(self._load(), name="modelfleet-load")

    async def _load(self) -> None:
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        try:
            # A thread of its own: init() may take minutes and must not hold an inference slot.
            await loop.run_in_executor(None, self.handler.load)
            await self.handler.start()
        except Exception as exc:
            self.state = "failed"
            self.error = f"{type(exc).__name__}: {exc}"
            log.exception("loading the model failed; readiness stays red: %s", self.error)
        else:
            self.state = "ready"
            self.metrics.ready = True
            log.info("ready: model %r", self.handler.model_name)
        finally:
            self.metrics.model_load_seconds = time.perf_counter() - started
            self._loaded.set()

    async def close(self) -> None:
        if self._load_task is not None and not self._load_task.done():
            self._load_task.cancel()
            await asyncio.gather(self._load_task, return_exceptions=True)
        await self.handler.close()
        self.executor.shutdown(wait=False, cancel_futures=True)

    async def loaded(self) -> bool:
        """Once loading is over (however long it takes): True if the model is ready."""
        await self._loaded.wait()
        return self.ready

    async def wait_ready(self) -> None:
        """Requests that arrive during init() wait for it, up to the scoring timeout."""
        if self.state == "ready":
            return
        if not self._loaded.is_set():
            timeout_ms = self.settings.scoring_timeout_ms
            try:
                await asyncio.wait_for(self._loaded.wait(), timeout_ms / 1000.0)
            except TimeoutError:
                raise NotReadyError("not ready: init() is still running") from None
        if self.state != "ready":
            raise NotReadyError(f"not ready: init failed: {self.error}")

    async def within_timeout(self, work: Awaitable[T]) -> T:
        # asyncio.timeout() cancels the request's own task instead of wrapping the work in a
        # new one as wait_for() does on 3.11: one task fewer per request.
        timeout_ms = self.settings.scoring_timeout_ms
        try:
            async with asyncio.timeout(timeout_ms / 1000.0):
                return await work
        except TimeoutError:
            log.error("scoring timed out after %d ms", timeout_ms)
            raise ScoringTimeoutError(f"scoring timed out after {timeout_ms} ms") from None
