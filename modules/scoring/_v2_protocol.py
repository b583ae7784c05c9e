"""Open Inference Protocol v2 (KServe / Triton REST) on top of any handler.

JSON tensors (`name`, `shape`, `datatype`, `data`) and Triton's binary tensor extension (a JSON
header of `Inference-Header-Content-Length` bytes followed by raw tensor bytes), which
`tritonclient[http]` uses by default; Triton's classification extension (an output's
`classification` parameter, `class_count` in tritonclient), so a client asking for the top
classes gets them rather than the whole tensor with a 200.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import _json as fast_json
from ._errors import BadRequestError
from ._json import all_finite
from ._tensors import V2_TO_NUMPY, TensorSpec, numpy_to_v2

HEADER_LENGTH = "Inference-Header-Content-Length"


@dataclass
class InferRequest:
    id: str | None
    inputs: dict[str, np.ndarray]
    # requested outputs (name -> binary?) or None for all
    outputs: dict[str, bool] | None
    binary_by_default: bool
    # output name -> how many top classes to answer instead of the tensor
    classification: dict[str, int] = field(default_factory=dict)


def decode_request(body: bytes, header_length: str | None) -> InferRequest:
    """Parse a v2 inference request; anything malformed is a 400 that says what, never a 500."""
    if header_length is not None:
        try:
            split = int(header_length)
        except ValueError:
            raise BadRequestError(f"{HEADER_LENGTH} is not a number") from None
        if not 0 <= split <= len(body):
            raise BadRequestError(f"{HEADER_LENGTH} {split} is outside the body")
        header, binary = body[:split], body[split:]
    else:
        header, binary = body, b""
    try:
        document = fast_json.loads(header)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise BadRequestError(f"inference request is not valid JSON: {exc}") from None
    if not isinstance(document, dict) or not isinstance(document.get("inputs"), list):
        raise BadRequestError("inference request needs an 'inputs' list")
    parameters = _parameters(document, "the request")
    inputs: dict[str, np.ndarray] = {}
    offset = 0
    for index, tensor in enumerate(document["inputs"]):
        array, used = _decode_tensor(tensor, index, binary, offset)
        if tensor["name"] in inputs:
            raise BadRequestError(f"input {tensor['name']!r} is given twice")
        offset += used
        inputs[tensor["name"]] = array
    if offset != len(binary):
        raise BadRequestError(f"{len(binary) - offset} bytes of binary data belong to no input")
    binary_default = _flag(parameters, "binary_data_output", False, "the request")
    outputs = None
    classification: dict[str, int] = {}
    requested = document.get("outputs")
    if requested is not None and not isinstance(requested, list):
        raise BadRequestError("'outputs' must be a list")
    if requested:  # an empty list asks for every output, as Triton reads it
        outputs = {}
        for item in requested:
            if not isinstance(item, dict) or not isinstance(item.get("name"), str):
                raise BadRequestError("each requested output needs a 'name'")
            if item["name"] in outputs:
                raise BadRequestError(f"output {item['name']!r} is requested twice")
            where = f"output {item['name']!r}"
            output_parameters = _parameters(item, where)
            outputs[item["name"]] = _flag(output_parameters, "binary_data", binary_default, where)
            count = output_parameters.get("classification")
            if count is not None:
                if type(count) is not int or count < 1:
                    raise BadRequestError(f"{where}: parameter 'classification' must be a positive integer")
                classification[item["name"]] = count
    request_id = document.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise BadRequestError("'id' must be a string")
    return InferRequest(request_id, inputs, outputs, binary_default, classification)


def _parameters(document: dict[str, Any], where: str) -> dict[str, Any]:
    parameters = document.get("parameters")
    if parameters is None:
        return {}
    if not isinstance(parameters, dict):
        raise BadRequestError(f"'parameters' of {where} must be an object")
    return parameters


def _flag(parameters: dict[str, Any], key: str, default: bool, where: str) -> bool:
    value = parameters.get(key, default)
    if not isinstance(value, bool):
        raise BadRequestError(f"{where}: parameter {key!r} must be true or false")
    return value


def _decode_tensor(tensor: Any, index: int, binary: bytes, offset: int) -> tuple[np.ndarray, int]:
    if not isinstance(tensor, dict):
        raise BadRequestError(f"inputs[{index}] is not an object")
    for key in ("name", "shape", "datatype"):
        if key not in tensor:
            raise BadRequestError(f"inputs[{index}] lacks {key!r}")
    name, datatype = tensor["name"], tensor["datatype"]
    if not isinstance(name, str):
        raise BadRequestError(f"inputs[{index}]: 'name' must be a string")
    shape = tensor["shape"]
    if not isinstance(shape, list) or not all(
        type(d) is int and d >= 0 for d in shape
    ):  # bool is an int subclass, and [true, 3] is no shape
        raise BadRequestError(f"input {name!r}: shape must be a list of non-negative integers")
    if not isinstance(datatype, str) or datatype not in V2_TO_NUMPY:
        raise BadRequestError(f"input {name!r}: unsupported datatype {datatype!r}")
    dtype = V2_TO_NUMPY[datatype]
    count = math.prod(shape)
    size = _parameters(tensor, f"input {name!r}").get("binary_data_size")
    if size is not None:
        if type(size) is not int or size < 0:
            raise BadRequestError(f"input {name!r}: binary_data_size must be a non-negative integer")
        raw = binary[offset : offset + size]
        if len(raw) != size:
            raise BadRequestError(f"input {name!r}: binary data is shorter than {size} bytes")
        flat = _bytes_elements(raw, name) if datatype == "BYTES" else _raw_elements(raw, dtype, name)
        used = size
    else:
        if "data" not in tensor:
            raise BadRequestError(f"input {name!r} has neither 'data' nor binary data")
        flat = _json_elements(tensor["data"], dtype, datatype, name)
        used = 0
    if flat.size != count:
        raise BadRequestError(f"input {name!r}: shape {shape} needs {count} elements, got {flat.size}")
    return flat.reshape(shape), used


def _json_elements(data: Any, dtype: Any, datatype: str, name: str) -> np.ndarray:
    if not isinstance(data, list):
        data = [data]
    if datatype == "BYTES":
        try:
            array = np.asarray(data, dtype=object)
        except ValueError:
            raise BadRequestError(f"input {name!r}: data is not a rectangular array") from None
        flat = array.reshape(-1)
        if not all(isinstance(item, str) for item in flat):
            raise BadRequestError(f"input {name!r}: BYTES data must be strings")
        return flat
    try:
        array = np.asarray(data)
    except (ValueError, OverflowError):
        raise BadRequestError(f"input {name!r}: data is not a rectangular array of numbers") from None
    if array.dtype.kind in ("U", "S", "O"):
        if array.dtype.kind == "O" and all(type(item) is int for item in array.reshape(-1)):
            raise BadRequestError(f"input {name!r}: a value is out of range for {datatype}")
        raise BadRequestError(f"input {name!r}: {datatype} data must be numbers")
    if datatype == "BOOL" and array.size and array.dtype.kind != "b":
        raise BadRequestError(f"input {name!r}: BOOL data must be true/false")
    target = np.dtype(dtype)
    if target.kind in "iu":
        if array.dtype.kind not in "biu":
            raise BadRequestError(f"input {name!r}: {datatype} data must be integers")
        if array.size and array.dtype.kind != "b":
            limits = np.iinfo(target)
            # Compared as Python ints: numpy would wrap 300 into a UINT8 44 without a word.
            if int(array.min()) < limits.min or int(array.max()) > limits.max:
                raise BadRequestError(
                    f"input {name!r}: a value is out of range for {datatype} ({limits.min}..{limits.max})"
                )
    elif target.kind == "f":
        if array.dtype.kind not in "biuf":
            raise BadRequestError(f"input {name!r}: {datatype} data must be numbers")
        if array.size and (array.dtype.kind != "f" or array.dtype.itemsize > target.itemsize):
            with np.errstate(over="ignore"):
                narrowed = array.astype(target)
            # 1e10 would become an FP16 infinity without a word
            if (np.isinf(narrowed) & np.isfinite(array)).any():
                raise BadRequestError(
                    f"input {name!r}: a value is out of range for {datatype} "
                    f"(largest {float(np.finfo(target).max):g})"
                )
            return narrowed.reshape(-1)
    return array.astype(target, copy=False).reshape(-1)


def _raw_elements(raw: bytes, dtype: Any, name: str) -> np.ndarray:
    dtype = np.dtype(dtype).newbyteorder("<")
    if len(raw) % dtype.itemsize:
        raise BadRequestError(f"input {name!r}: {len(raw)} bytes is not a whole number of elements")
    return np.frombuffer(raw, dtype=dtype).astype(dtype.newbyteorder("="), copy=False)


def _bytes_elements(raw: bytes, name: str) -> np.ndarray:
    """Triton's length-prefixed BYTES elements, as text where they are UTF-8.

    Text is what an ONNX string tensor holds and what the same request in JSON gives, so a
    model or a script sees one kind of value whichever encoding the client chose; elements
    that are not UTF-8 stay bytes, and a handler that needs text refuses them with a 400.
    """
    items: list[bytes] = []
    position = 0
    while position < len(raw):
        if position + 4 > len(raw):
            raise BadRequestError(f"input {name!r}: truncated BYTES element")
        (length,) = struct.unpack_from("<I", raw, position)
        position += 4
        if position + length > len(raw):
            raise BadRequestError(f"input {name!r}: truncated BYTES element")
        items.append(raw[position : position + length])
        position += length
    try:
        texts: list[Any] = [item.decode("utf-8") for item in items]
    except UnicodeDecodeError:
        texts = list(items)
    array = np.empty(len(texts), dtype=object)
    array[:] = texts
    return array


def encode_response(
    model_name: str,
    model_version: str,
    request: InferRequest,
    outputs: dict[str, np.ndarray],
    batched: frozenset[str] = frozenset(),
) -> tuple[bytes, dict[str, str]]:
    """`batched`: outputs whose first dimension is the batch (the model leaves it free), which
    classification ranks per batch entry rather than over the whole tensor."""
    if request.outputs is not None:
        missing = [name for name in request.outputs if name not in outputs]
        if missing:
            raise BadRequestError(f"model has no output named {missing[0]!r}")
        chosen = {name: request.outputs[name] for name in request.outputs}
    else:
        chosen = {name: request.binary_by_default for name in outputs}
    documents = []
    chunks: list[bytes] = []
    finite = True
    for name, binary in chosen.items():
        array = np.asarray(outputs[name])
        count = request.classification.get(name)
        if count is not None:
            array = classify(array, count, name in batched, name)
        datatype = numpy_to_v2(array.dtype)
        document: dict[str, Any] = {"name": name, "datatype": datatype, "shape": list(array.shape)}
        if binary:
            raw = _bytes_payload(array) if datatype == "BYTES" else _little_endian(array)
            document["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        else:
            document["data"] = _json_data(array, datatype)
            finite = finite and all_finite(array)
        documents.append(document)
    response: dict[str, Any] = {
        "model_name": model_name,
        "model_version": model_version,
        "outputs": documents,
    }
    if request.id is not None:
        response["id"] = request.id
    # NaN/Infinity keep the standard library's spelling (orjson would write null).
    header = fast_json.dumps_finite(response) if finite else json.dumps(response).encode()
    if not chunks:
        return header, {"Content-Type": "application/json"}
    return header + b"".join(chunks), {
        "Content-Type": "application/octet-stream",
        HEADER_LENGTH: str(len(header)),
    }


def classify(array: np.ndarray, count: int, batched: bool, name: str) -> np.ndarray:
    """Triton's classification of an output: the `count` highest values as `"<value>:<index>"`
    strings, highest first, with shape `[batch, count]` for a batched output and `[count]`
    otherwise. Values are written as C++'s `std::to_string` writes them (six decimals for a
    float), as Triton does; a count above the number of classes gives them all."""
    if array.dtype.kind not in "iuf":
        raise BadRequestError(f"output {name!r}: classification needs numbers, the output is {array.dtype}")
    rows = array.reshape(array.shape[0], -1) if batched and array.ndim >= 1 else array.reshape(1, -1)
    take = min(count, rows.shape[1])
    floats = array.dtype.kind == "f"
    result = np.empty((rows.shape[0], take), dtype=object)
    for row_index, row in enumerate(rows):
        # stable and descending: equal values keep their index order
        order = np.argsort(-row.astype(np.float64) if floats else -row.astype(object), kind="stable")[:take]
        for column, index in enumerate(order):
            value = row[index]
            text = f"{float(value):f}" if floats else str(int(value))
            result[row_index, column] = f"{text}:{int(index)}".encode()
    return result if batched and array.ndim >= 1 else result.reshape(take)


def _json_data(array: np.ndarray, datatype: str) -> list[Any]:
    flat = array.reshape(-1)
    if datatype == "BYTES":
        return [item.decode("utf-8", "replace") if isinstance(item, bytes) else str(item) for item in flat]
    return flat.tolist()


def _little_endian(array: np.ndarray) -> bytes:
    return np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()


def _bytes_payload(array: np.ndarray) -> bytes:
    parts = []
    for item in array.reshape(-1):
        data = item if isinstance(item, bytes) else str(item).encode()
        parts.append(struct.pack("<I", len(data)) + data)
    return b"".join(parts)


def model_metadata(
    name: str, version: str, platform: str, specs: tuple[list[TensorSpec], list[TensorSpec]]
) -> dict[str, Any]:
    inputs, outputs = specs
    return {
        "name": name,
        "versions": [version],
        "platform": platform,
        "inputs": [_spec_metadata(spec) for spec in inputs],
        "outputs": [_spec_metadata(spec) for spec in outputs],
    }


def _spec_metadata(spec: TensorSpec) -> dict[str, Any]:
    return {"name": spec.name, "datatype": spec.datatype, "shape": spec.v2_shape()}


# Triton's fill-in for a model whose first dimension is free when its configuration names no
# max_batch_size (its ONNX Runtime backend's `default-max-batch-size`).
TRITON_DEFAULT_MAX_BATCH_SIZE = 4


def model_config(
    name: str,
    platform: str,
    specs: tuple[list[TensorSpec], list[TensorSpec]],
    max_batch_size: int | None,
) -> dict[str, Any]:
    """The model's configuration as Triton writes it for an ONNX model it completed itself.

    A model whose every input and output leaves the first dimension free is a batching model
    to Triton: `max_batch_size` above 0 and `dims` without the batch dimension (which the
    metadata's `shape` keeps as -1). `max_batch_size` is the host's dynamic batching size when
    it batches, else Triton's own fill-in; the host itself takes any number of rows."""
    inputs, outputs = specs
    tensors = [*inputs, *outputs]
    batching = bool(tensors) and all(spec.shape and spec.shape[0] is None for spec in tensors)
    skip = 1 if batching else 0

    def tensor(spec: TensorSpec) -> dict[str, Any]:
        return {
            "name": spec.name,
            "data_type": "TYPE_STRING" if spec.datatype == "BYTES" else f"TYPE_{spec.datatype}",
            "dims": spec.v2_shape()[skip:],
        }

    config: dict[str, Any] = {
        "name": name,
        "platform": platform,
        "backend": "onnxruntime" if platform == "onnxruntime_onnx" else "python",
        "version_policy": {"latest": {"num_versions": 1}},
        "max_batch_size": (max_batch_size or TRITON_DEFAULT_MAX_BATCH_SIZE) if batching else 0,
        "input": [{**tensor(spec), "format": "FORMAT_NONE"} for spec in inputs],
        "output": [{**tensor(spec), "label_filename": ""} for spec in outputs],
    }
    if batching and max_batch_size is not None:
        config["dynamic_batching"] = {}
    return config
