"""Serving a bare ONNX model with no entry script: the graph is the schema.

`POST /score` takes `{"<input name>": [...]}` (or `{"data": [...]}` when the graph has a single
input) and answers `{"<output name>": [...]}`; names, element types and fixed dimensions come
from the graph, so a mismatch is a 400 that says which field and which dimension.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import numpy as np

from .._errors import ConfigError
from . import _json as fast_json
from ._batching import DynamicBatcher
from ._entry_script import parse_json_object
from ._errors import BadRequestError, RunFailedError
from ._handler import Handler, json_reply
from ._json import all_finite
from ._onnx_session import create_session
from ._raw_http import AMLRequest, AMLResponse
from ._tensors import TensorSpec, check_shape, to_array

# Bodies up to this size are decoded on the event loop: a thread hop costs more than the parse.
_INLINE_DECODE_BYTES = 256 * 1024


def find_onnx_model(model_dir: Path) -> Path:
    """The one `.onnx` file under `model_dir` (flat or `<name>/model.onnx`)."""
    if not model_dir.is_dir():
        raise ConfigError(f"model folder {model_dir} does not exist")
    found = sorted(p for p in model_dir.rglob("*.onnx") if p.is_file())
    if not found:
        raise ConfigError(f"no .onnx file under {model_dir}; give --entry-script to serve it")
    if len(found) > 1:
        names = ", ".join(str(p.relative_to(model_dir)) for p in found)
        raise ConfigError(f"several .onnx files under {model_dir} ({names}); give --entry-script to choose")
    return found[0]


def zero_code_model_name(path: Path) -> str:
    """The file's stem (`resnet50.onnx` answers as `resnet50`), which names the model where the
    folder may hold anything (`serve --model-dir ./models`); `model.onnx`, Azure ML's habitual
    file name that names nothing, takes the name of the folder it is in instead."""
    if path.stem.lower() != "model":
        return path.stem
    return path.resolve().parent.name or "model"


class OnnxModelHandler(Handler):
    platform = "onnxruntime_onnx"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.model_path = find_onnx_model(self.settings.model_dir)
        if self.settings.model_name is None:
            self.model_name = zero_code_model_name(self.model_path)
        self._batcher: DynamicBatcher | None = None

    def load(self) -> None:
        self._session = create_session(self.model_path, self.settings)
        self.inputs = [TensorSpec.from_ort(node) for node in self._session.get_inputs()]
        self.outputs = [TensorSpec.from_ort(node) for node in self._session.get_outputs()]
        self._output_names = [spec.name for spec in self.outputs]

    async def start(self) -> None:
        batching = self.settings.batching
        if batching is not None and all(spec.shape and spec.shape[0] is None for spec in self.inputs):
            self._batcher = DynamicBatcher(
                self._run_sync,
                max_batch_size=batching.max_batch_size,
                max_wait_ms=batching.max_wait_ms,
                executor=self.executor,
                max_in_flight=self.settings.inference_workers,
                on_batch=self.metrics.observe_batch,
            )
            self._batcher.start()

    async def close(self) -> None:
        if self._batcher is not None:
            await self._batcher.close()

    def _run_sync(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        try:
            values = self._session.run(self._output_names, feeds)
        except Exception as exc:
            raise RunFailedError(f"model failed: {type(exc).__name__}: {exc}") from None
        return dict(zip(self._output_names, values, strict=True))

    async def _run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self._batcher is not None:
            return await self._batcher.submit(feeds)
        rows = next(iter(feeds.values())).shape[0] if feeds else 1
        self.metrics.observe_batch(rows if rows else 1)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.executor, self._run_sync, feeds)

    def _decode(self, body: bytes) -> dict[str, np.ndarray]:
        document = parse_json_object(body)
        feeds: dict[str, np.ndarray] = {}
        for spec in self.inputs:
            field = spec.name
            if field not in document and len(self.inputs) == 1 and "data" in document:
                field = "data"
            if field not in document:
                hint = " (or 'data')" if len(self.inputs) == 1 else ""
                raise BadRequestError(f"missing field {spec.name!r}{hint}")
            array = to_array(document[field], spec.numpy_dtype, field)
            check_shape(spec, array.shape, field)
            feeds[spec.name] = array
        return feeds

    async def score(self, request: AMLRequest) -> AMLResponse:
        if request.method != "POST":
            raise BadRequestError("POST a JSON body to /score")
        if len(request.data) <= _INLINE_DECODE_BYTES:
            feeds = self._decode(request.data)
        else:
            loop = asyncio.get_running_loop()
            feeds = await loop.run_in_executor(self.executor, self._decode, request.data)
        outputs = await self._run(feeds)
        result = {name: value.tolist() for name, value in outputs.items()}
        if all(all_finite(value) for value in outputs.values()):
            reply = AMLResponse(None, 200)
            reply.body = fast_json.dumps_finite(result)
            return reply
        return json_reply(result)  # NaN/Infinity spelled as the standard library does

    async def infer(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        known = {spec.name for spec in self.inputs}
        unknown = sorted(set(inputs) - known)
        if unknown:
            raise BadRequestError(f"model has no input named {unknown[0]!r}")
        feeds = {}
        for spec in self.inputs:
            if spec.name not in inputs:
                raise BadRequestError(f"missing input {spec.name!r}")
            array = inputs[spec.name]
            if array.dtype != np.dtype(spec.numpy_dtype):
                raise BadRequestError(
                    f"input {spec.name!r}: datatype mismatch, model expects {spec.datatype}"
                )
            if spec.datatype == "BYTES" and not all(isinstance(item, str) for item in array.reshape(-1)):
                # ONNX Runtime would store str(b"...") - a wrong answer with a 200.
                raise BadRequestError(f"input {spec.name!r}: BYTES elements must be UTF-8 text")
            check_shape(spec, array.shape, spec.name)
            feeds[spec.name] = array
        return await self._run(feeds)

    def swagger_parts(self) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
        def tensor_schema(spec: TensorSpec) -> dict[str, Any]:
            item = _item_schema(spec.datatype)
            for _ in spec.shape:
                item = {"type": "array", "items": item}
            item["description"] = f"{spec.datatype} tensor, shape {spec.shape_text()}"
            return item

        def document(specs: list[TensorSpec]) -> dict[str, Any]:
            return {
                "type": "object",
                "required": [spec.name for spec in specs],
                "properties": {spec.name: tensor_schema(spec) for spec in specs},
            }

        return document(self.inputs), document(self.outputs)

    def tensor_specs(self) -> tuple[list[TensorSpec], list[TensorSpec]]:
        return self.inputs, self.outputs


def _item_schema(datatype: str) -> dict[str, Any]:
    if datatype.startswith("FP"):
        return {"type": "number", "format": "float" if datatype in ("FP16", "FP32") else "double"}
    if datatype.startswith(("INT", "UINT")):
        return {"type": "integer", "format": "int64" if datatype.endswith("64") else "int32"}
    if datatype == "BOOL":
        return {"type": "boolean"}
    return {"type": "string"}
