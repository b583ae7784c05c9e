"""KServe's V1 inference protocol (TensorFlow Serving's REST API) on top of any handler.

A V1 request carries no datatypes and no shapes, only JSON values: `{"instances": [...]}` gives
one value (or one object of named values) per batch entry, `{"inputs": ...}` gives whole batched
tensors. The model's declared inputs supply the element types and the dimensions to check, so
the same mismatch that is a precise 400 on `/score` is one here too. Both parts are plain
functions so the protocol can be tested without a server.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import _json as fast_json
from ._errors import BadRequestError, RunFailedError
from ._handler import _json_default
from ._json import all_finite
from ._tensors import TensorSpec, check_shape, to_array

# TensorFlow Serving's name for the one signature a model has when nobody chose another.
DEFAULT_SIGNATURE = "serving_default"
_KEYS = frozenset({"instances", "inputs", "signature_name"})


@dataclass
class PredictRequest:
    inputs: dict[str, np.ndarray]
    # The number of instances in row format, which the answer must split into; None: columnar.
    rows: int | None


def decode_predict(body: bytes, specs: list[TensorSpec]) -> PredictRequest:
    """Parse a V1 request against the model's inputs; anything malformed is a 400 that says what.

    `specs` may be empty (an entry script that declares nothing): then every value must be
    named, and element types follow the JSON values as v2 clients would have declared them.
    """
    if not body.strip():
        raise BadRequestError('request body is empty; expected {"instances": [...]} or {"inputs": ...}')
    try:
        document = fast_json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise BadRequestError(f"request is not valid JSON: {exc}") from None
    if not isinstance(document, dict):
        raise BadRequestError(
            f"request must be a JSON object holding 'instances' or 'inputs', got {_kind(document)}"
        )
    unexpected = sorted(set(document) - _KEYS)
    if unexpected:
        raise BadRequestError(f"unexpected key {unexpected[0]!r}; a request holds 'instances' or 'inputs'")
    signature = document.get("signature_name", DEFAULT_SIGNATURE)
    if signature != DEFAULT_SIGNATURE:
        raise BadRequestError(f"unknown signature_name {signature!r}; this model has {DEFAULT_SIGNATURE!r}")
    if "instances" in document and "inputs" in document:
        raise BadRequestError("give 'instances' (row format) or 'inputs' (columnar format), not both")
    if "instances" in document:
        instances = document["instances"]
        columns = _row_columns(instances, specs)
        rows: int | None = len(instances)
    elif "inputs" in document:
        columns = _named_columns(document["inputs"], specs)
        rows = None
    else:
        raise BadRequestError("request needs 'instances' (row format) or 'inputs' (columnar format)")
    by_name = {spec.name: spec for spec in specs}
    inputs: dict[str, np.ndarray] = {}
    for name, value in columns.items():
        spec = by_name.get(name)
        array = _tensor(value, spec, name)
        if spec is not None:
            check_shape(spec, array.shape, name)
        inputs[name] = array
    return PredictRequest(inputs, rows)


def _row_columns(instances: Any, specs: list[TensorSpec]) -> dict[str, list[Any]]:
    """Each input's values across the instances, in order, so stacking them adds the batch axis."""
    if instances == []:
        raise BadRequestError("'instances' is empty; give one entry per instance")
    if not isinstance(instances, list):
        raise BadRequestError(
            f"'instances' must be a non-empty array with one entry per instance, got {_kind(instances)}"
        )
    named = [isinstance(instance, dict) for instance in instances]
    if not any(named):
        return {_only_input(specs, "each instance"): instances}
    if not all(named):
        raise BadRequestError(
            f"instances[{named.index(True)}] is an object but instances[{named.index(False)}] is not; "
            "give every instance as an object {input_name: value}, or none"
        )
    names = set(instances[0])
    for index, instance in enumerate(instances[1:], start=1):
        if set(instance) != names:
            raise BadRequestError(
                f"instances[{index}] names inputs {sorted(instance)}, instances[0] names {sorted(names)}"
            )
    return {name: [instance[name] for instance in instances] for name in instances[0]}


def _named_columns(inputs: Any, specs: list[TensorSpec]) -> dict[str, Any]:
    if isinstance(inputs, dict):  # a tensor's value is never an object: these are names
        return dict(inputs)
    return {_only_input(specs, "'inputs'"): inputs}


def _only_input(specs: list[TensorSpec], what: str) -> str:
    """The name an unnamed value belongs to: there must be exactly one it can be."""
    if len(specs) == 1:
        return specs[0].name
    if not specs:
        raise BadRequestError(
            f"this model does not declare its inputs; give {what} as an object {{input_name: value}}"
        )
    names = ", ".join(spec.name for spec in specs)
    raise BadRequestError(
        f"the model has {len(specs)} inputs ({names}); give {what} as an object {{input_name: value}}"
    )


def _tensor(value: Any, spec: TensorSpec | None, field: str) -> np.ndarray:
    if spec is None:
        return _inferred(value, field)
    if spec.datatype == "BYTES":
        return _strings(value, field)
    return to_array(value, np.dtype(spec.numpy_dtype), field)  # out-of-range numbers refused there


def _strings(value: Any, field: str) -> np.ndarray:
    """Text for a string input: anything else would reach ONNX Runtime as its `str()`."""
    try:
        array = np.asarray(value, dtype=object)
    except ValueError:
        array = None
    if array is None or not all(isinstance(item, str) for item in array.reshape(-1)):
        raise BadRequestError(f"field {field!r}: expected a rectangular array of strings")
    return array


def _inferred(value: Any, field: str) -> np.ndarray:
    """An input the handler declares no type for: the type the JSON values have."""
    try:
        array = np.asarray(value)
    except (ValueError, OverflowError):
        raise BadRequestError(f"field {field!r}: not a rectangular array") from None
    if array.dtype.kind == "U":
        return array.astype(object)
    if array.dtype.kind not in "biuf":
        raise BadRequestError(f"field {field!r}: not a rectangular array of numbers, booleans or strings")
    return array


def encode_predictions(request: PredictRequest, outputs: dict[str, np.ndarray]) -> bytes:
    """The answer in the request's format: `predictions` per instance, or columnar `outputs`."""
    arrays = {name: np.asarray(value) for name, value in outputs.items()}
    if request.rows is None:
        if len(arrays) == 1:
            document: dict[str, Any] = {"outputs": _value(next(iter(arrays.values())))}
        else:
            document = {"outputs": {name: _value(array) for name, array in arrays.items()}}
    else:
        rows = request.rows
        for name, array in arrays.items():
            if array.ndim == 0 or array.shape[0] != rows:
                raise BadRequestError(
                    f"output {name!r} has shape {list(array.shape)}, not one entry for each of the "
                    f'{rows} instances; ask in columnar format ({{"inputs": ...}}) to have it whole'
                )
        if len(arrays) == 1:
            predictions: list[Any] = _value(next(iter(arrays.values())))
        else:
            columns = {name: _value(array) for name, array in arrays.items()}
            predictions = [{name: column[row] for name, column in columns.items()} for row in range(rows)]
        document = {"predictions": predictions}
    if all(array.dtype.kind in "biuf" and all_finite(array) for array in arrays.values()):
        return fast_json.dumps_finite(document)
    # NaN/Infinity keep the standard library's spelling (orjson would write null), as on v2.
    try:
        return json.dumps(document, default=_json_default).encode()
    except (TypeError, ValueError) as exc:
        raise RunFailedError(f"the result has no JSON form: {exc}") from None


def _value(array: np.ndarray) -> Any:
    if array.dtype.kind in "biuf":
        return array.tolist()
    return _plain(array.tolist())


def _plain(value: Any) -> Any:
    """Strings as text: ONNX string outputs and entry scripts may hand back bytes."""
    if isinstance(value, list):
        return [_plain(item) for item in value]
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, np.ndarray):
        return _plain(value.tolist())
    if isinstance(value, np.generic):
        return value.item()
    return value


def _kind(value: Any) -> str:
    """A JSON value's type in JSON's words, for messages a client of any language reads."""
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, bool):
        return "a boolean"
    if value is None:
        return "null"
    return "a number"
