"""The one interface both ways of serving a model implement: an entry script or a bare ONNX file.

The app owns HTTP, limits, auth, timeouts and metrics; a handler only turns a request (or v2
tensors) into a result, running anything heavy on the shared executor so the event loop never
waits on inference.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from concurrent.futures import Executor
from pathlib import Path
from typing import Any

import numpy as np

from ._errors import RunFailedError
from ._metrics import ScoringMetrics
from ._raw_http import AMLRequest, AMLResponse
from ._settings import ScoringSettings
from ._tensors import TensorSpec


class Handler(ABC):
    platform = "python"
    # True when run() takes the request itself (raw mode): it then also sees OPTIONS.
    raw_requests = False

    def __init__(self, settings: ScoringSettings, executor: Executor, metrics: ScoringMetrics) -> None:
        self.settings = settings
        self.executor = executor
        self.metrics = metrics
        self.model_name = settings.model_name or default_model_name(settings.model_dir)

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


def json_reply(result: Any, status: int = 200) -> AMLResponse:
    if result is None:
        return AMLResponse(None, status)  # `{}`, as Azure ML answers a run() that returned None
    try:
        body = json.dumps(result, default=_json_default)
    except (TypeError, ValueError) as exc:
        raise RunFailedError(f"run() returned a value that is not JSON-serialisable: {exc}") from None
    reply = AMLResponse(None, status)
    reply.body = body.encode()
    return reply
