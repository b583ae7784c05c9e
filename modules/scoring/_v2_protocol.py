"""Open Inference Protocol v2 (KServe / Triton REST) on top of any handler.

JSON tensors (`name`, `shape`, `datatype`, `data`) and Triton's binary tensor extension (a JSON
header of `Inference-Header-Content-Length` bytes followed by raw tensor bytes), which
`tritonclient[http]` uses by default.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
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


def decode_request(body: bytes, header_length: str | None) -> InferRequest:
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
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadRequestError(f"inference request is not valid JSON: {exc}") from None
    if not isinstance(document, dict) or not isinstance(document.get("inputs"), list):
        raise BadRequestError("inference request needs an 'inputs' list")
    inputs: dict[str, np.ndarray] = {}
    offset = 0
    for index, tensor in enumerate(document["inputs"]):
        array, used = _decode_tensor(tensor, index, binary, offset)
        offset += used
        inputs[tensor["name"]] = array
    if offset != len(binary):
        raise BadRequestError(f"{len(binary) - offset} bytes of binary data belong to no input")
    parameters = document.get("parameters") or {}
    outputs = None
    if isinstance(document.get("outputs"), list):
        outputs = {}
        for item in document["outputs"]:
            if not isinstance(item, dict) or not isinstance(item.get("name"), str):
                raise BadRequestError("each requested output needs a 'name'")
            item_parameters = item.get("parameters") or {}
            outputs[item["name"]] = bool(
                item_parameters.get("binary_data", parameters.get("binary_data_output", False))
            )
    request_id = document.get("id")
    return InferRequest(
        str(request_id) if request_id is not None else None,
        inputs,
        outputs,
        bool(parameters.get("binary_data_output", False)),
    )


def _decode_tensor(tensor: Any, index: int, binary: bytes, offset: int) -> tuple[np.ndarray, int]:
    if not isinstance(tensor, dict):
        raise BadRequestError(f"inputs[{index}] is not an object")
    for key in ("name", "shape", "datatype"):
        if key not in tensor:
            raise BadRequestError(f"inputs[{index}] lacks {key!r}")
    name, datatype = tensor["name"], tensor["datatype"]
    shape = tensor["shape"]
    if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
        raise BadRequestError(f"input {name!r}: shape must be a list of non-negative integers")
    if datatype not in V2_TO_NUMPY:
        raise BadRequestError(f"input {name!r}: unsupported datatype {datatype!r}")
    dtype = V2_TO_NUMPY[datatype]
    count = int(np.prod(shape)) if shape else 1
    size = (tensor.get("parameters") or {}).get("binary_data_size")
    if size is not None:
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
    if datatype == "BYTES":
        array = np.asarray(data, dtype=object).reshape(-1)
        return array
    try:
        array = np.asarray(data)
    except ValueError:
        raise BadRequestError(f"input {name!r}: data is not a rectangular array") from None
    if array.dtype.kind in ("U", "S", "O"):
        raise BadRequestError(f"input {name!r}: {datatype} data must be numbers")
    if datatype == "BOOL" and array.size and array.dtype.kind != "b":
        raise BadRequestError(f"input {name!r}: BOOL data must be true/false")
    if np.dtype(dtype).kind in "iu" and array.dtype.kind == "f":
        raise BadRequestError(f"input {name!r}: {datatype} data must be integers")
    return array.astype(dtype, copy=False).reshape(-1)


def _raw_elements(raw: bytes, dtype: Any, name: str) -> np.ndarray:
    dtype = np.dtype(dtype).newbyteorder("<")
    if len(raw) % dtype.itemsize:
        raise BadRequestError(f"input {name!r}: {len(raw)} bytes is not a whole number of elements")
    return np.frombuffer(raw, dtype=dtype).astype(dtype.newbyteorder("="), copy=False)


def _bytes_elements(raw: bytes, name: str) -> np.ndarray:
    items: list[bytes] = []
    position = 0
    while position < len(raw):
        if position + 4 > len(raw):
            raise BadRequestError(f"input {name!r}: truncated BYTES element")
        (length,) = struct.unpack_from("<I", raw, position)
        position += 4
        items.append(raw[position : position + length])
        position += length
    if position != len(raw):
        raise BadRequestError(f"input {name!r}: truncated BYTES element")
    return np.array(items, dtype=object)


def encode_response(
    model_name: str,
    model_version: str,
    request: InferRequest,
    outputs: dict[str, np.ndarray],
) -> tuple[bytes, dict[str, str]]:
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
