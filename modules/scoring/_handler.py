"""The one interface both ways of serving a model implement: an entry script or a bare ONNX file.

The app owns HTTP, limits, auth, timeouts and metrics; a handler only turns a request (or v2
tensors) into a result, running anything heavy on the shared executor so the event loop never
waits on a slow model. Work measured to be tiny may run on the loop instead (`offload`, see
_inline.py): there the hop would cost more than the work.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from concurrent.futures import Executor
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from ._errors import RunFailedError, ScoringTimeoutError
from ._inline import InlineGate, thread_time, voluntary_switches
from ._metrics import ScoringMetrics
from ._raw_http import AMLRequest, AMLResponse
from ._settings import ScoringSettings
from ._tensors import TensorSpec

A = TypeVar("A")
R = TypeVar("R")


class Handler(ABC):
    platform = "python"
    # True when run() takes the request itself (raw mode): it then also sees OPTIONS.
    raw_requests = False

    def __init__(self, settings: ScoringSettings, executor: Executor, metrics: ScoringMetrics) -> None:
        self.settings = settings
        self.executor = executor
        self.metrics = metrics
        self.model_name = settings.model_name or default_model_name(settings.model_dir)
        # A run that cannot finish inside the scoring timeout must stay where the timeout works.
        threshold = settings.inline_below_ms if settings.inline_below_ms < settings.scoring_timeout_ms else 0
        self.inline = InlineGate(threshold)
        metrics.inline_gate = self.inline
        self._timeout_s = settings.scoring_timeout_ms / 1000.0
        # Runs handed to the threads and not finished there yet, counted by the threads, and
        # the requests on the loop waiting for them: a run on the loop never overlaps one on a
        # thread, so a script is never run beside itself more than its thread count allows.
        self._threaded_runs = 0
        self._threads_lock = threading.Lock()
        self._idle_waiters: list[asyncio.Future[None]] = []

    def runs_inline(self, size: int) -> bool:
        """True when the next request with a body of `size` bytes is answered on the loop at
        once: it then needs no timer, since it cannot be cut short there and is measured tiny.
        (With runs still going on the threads it waits for them first, under the timer.)"""
        return self.inline.allows(size) and not self._threaded_runs

    async def offload(self, work: Callable[[A], R], argument: A, size: int) -> R:
        """`work(argument)` on an inference thread, or on the loop while it is measured to be
        tiny (`size`: the body's bytes, which a model's cost tends to follow)."""
        if self.inline.allows(size):
            if self._threaded_runs:
                await self._threads_idle()
            if self.inline.allows(size):  # it may have gone back while this request waited
                return self._run_on_loop(work, argument)
        loop = asyncio.get_running_loop()
        with self._threads_lock:
            self._threaded_runs += 1
        return await loop.run_in_executor(self.executor, self._timed, work, argument, size, loop)

    def _run_on_loop(self, work: Callable[[A], R], argument: A) -> R:
        # The script sees what it would on a thread: no running loop, so a run() that calls
        # asyncio.run() or builds a loop of its own works the same here.
        running = asyncio._get_running_loop()
        asyncio._set_running_loop(None)
        switches = voluntary_switches()
        cpu_started = thread_time()
        started = time.perf_counter()
        try:
            result = work(argument)
        finally:
            elapsed = time.perf_counter() - started
            asyncio._set_running_loop(running)
            if elapsed > self.inline.threshold:  # only a slow run is asked why it was slow
                cpu = thread_time() - cpu_started
                blocked = switches < 0 or voluntary_switches() != switches
            else:
                cpu, blocked = elapsed, False
            self.inline.record_inline(elapsed, cpu, blocked)
        if elapsed > self._timeout_s:  # the answer the threaded path would have given
            raise ScoringTimeoutError(f"scoring timed out after {self.settings.scoring_timeout_ms} ms")
        return result

    def _timed(self, work: Callable[[A], R], argument: A, size: int, loop: asyncio.AbstractEventLoop) -> R:
        started = time.perf_counter()
        try:
            return work(argument)
        finally:
            self.inline.record_threaded(time.perf_counter() - started, size)
            with self._threads_lock:
                self._threaded_runs -= 1
                waiters = self._idle_waiters if self._threaded_runs == 0 else []
                if waiters:
                    self._idle_waiters = []
            if waiters:
                loop.call_soon_threadsafe(_wake, waiters)

    async def _threads_idle(self) -> None:
        """Until no run is going on a thread (also one whose request already timed out)."""
        with self._threads_lock:
            if not self._threaded_runs:
                return
            waiter = asyncio.get_running_loop().create_future()
            self._idle_waiters.append(waiter)
        await waiter

    @abstractmethod
    def load(self) -> None:
        """Import / open the model and run init(); called once, in a worker thread."""

    async def start(self) -> None:  # noqa: B027 - optional hook
        """Start loop-bound helpers (e.g. the batcher) once load() succeeded."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Stop what start() started."""

    @abstractmethod
    async def score(self, request: AMLRequest) -> AMLResponse:
        """Answer `POST /score`."""

    @abstractmethod
    async def infer(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Answer a v2 inference request, tensors in and tensors out."""

    @abstractmethod
    def swagger_parts(self) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
        """JSON schemas of the /score body and result, where known."""

    @abstractmethod
    def tensor_specs(self) -> tuple[list[TensorSpec], list[TensorSpec]]:
        """v2 metadata: inputs and outputs, where known."""


def _wake(waiters: list[asyncio.Future[None]]) -> None:
    for waiter in waiters:
        if not waiter.done():
            waiter.set_result(None)


def default_model_name(model_dir: Path) -> str:
    """`model_dir/<name>/...` for packaged modules (one sub-folder), else the folder's own name."""
    try:
        folders = [p for p in model_dir.iterdir() if p.is_dir() and not p.name.startswith(".")]
    except OSError:
        folders = []
    if len(folders) == 1 and not any(model_dir.glob("*.onnx")):
        return folders[0].name
    return model_dir.resolve().name or "model"


def _json_default(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


# What `json.dumps(result, default=_json_default)` writes, without building an encoder per call.
_ENCODER = json.JSONEncoder(default=_json_default)


def json_reply(result: Any, status: int = 200) -> AMLResponse:
    if result is None:
        return AMLResponse(None, status)  # `{}`, as Azure ML answers a run() that returned None
    try:
        body = _ENCODER.encode(result)
    except (TypeError, ValueError) as exc:
        raise RunFailedError(f"run() returned a value that is not JSON-serialisable: {exc}") from None
    reply = AMLResponse(None, status)
    reply.body = body.encode()
    reply.json_only = True
    return reply
