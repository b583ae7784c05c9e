"""Tensor names, types and shapes shared by the zero-code handler and the v2 protocol.

ONNX Runtime, numpy and the Open Inference Protocol each spell element types differently; this is
the one table that translates, plus the checks that turn a JSON value into an array or a precise
400 message.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ._errors import BadRequestError

# ONNX Runtime type string -> (v2 datatype, numpy dtype)
_ORT_TYPES: dict[str, tuple[str, Any]] = {
    "tensor(float)": ("FP32", np.float32),
    "tensor(float16)": ("FP16", np.float16),
    "tensor(double)": ("FP64", np.float64),
    "tensor(int64)": ("INT64", np.int64),
    "tensor(int32)": ("INT32", np.int32),
    "tensor(int16)": ("INT16", np.int16),
    "tensor(int8)": ("INT8", np.int8),
    "tensor(uint64)": ("UINT64", np.uint64),
    "tensor(uint32)": ("UINT32", np.uint32),
    "tensor(uint16)": ("UINT16", np.uint16),
    "tensor(uint8)": ("UINT8", np.uint8),
    "tensor(bool)": ("BOOL", np.bool_),
    "tensor(string)": ("BYTES", np.object_),
}

V2_TO_NUMPY: dict[str, Any] = {v2: dtype for v2, dtype in _ORT_TYPES.values()}


def numpy_to_v2(dtype: np.dtype) -> str:
    if dtype.kind in ("U", "S", "O"):
        return "BYTES"
    for v2, candidate in V2_TO_NUMPY.items():
        if candidate is not np.object_ and np.dtype(candidate) == dtype:
            return v2
    raise BadRequestError(f"no Open Inference Protocol datatype for numpy dtype {dtype}")


@dataclass(frozen=True)
class TensorSpec:
    """One model input or output: shape dims are ints, or None where the graph leaves them free."""

    name: str
    datatype: str
    shape: tuple[int | None, ...]

    @property
    def numpy_dtype(self) -> Any:
        return V2_TO_NUMPY[self.datatype]

    @classmethod
    def from_ort(cls, node: Any) -> TensorSpec:
        datatype = _ORT_TYPES.get(node.type, ("BYTES", np.object_))[0]
        shape = tuple(d if isinstance(d, int) and d >= 0 else None for d in (node.shape or ()))
        return cls(node.name, datatype, shape)

    def shape_text(self) -> str:
        return "[" + ", ".join("N" if d is None else str(d) for d in self.shape) + "]"

    def v2_shape(self) -> list[int]:
        return [-1 if d is None else d for d in self.shape]


def check_shape(spec: TensorSpec, shape: tuple[int, ...], field: str) -> None:
    """Rank and fixed dimensions must match the graph; free dimensions take any size."""
    if len(shape) != len(spec.shape):
        raise BadRequestError(
            f"field {field!r}: expected {len(spec.shape)} dimensions {spec.shape_text()}, "
            f"got {len(shape)} (shape {list(shape)})"
        )
    for axis, (want, got) in enumerate(zip(spec.shape, shape, strict=True)):
        if want is not None and want != got:
            raise BadRequestError(
                f"field {field!r}: dimension {axis} has size {got}, expected {want} "
                f"(shape {spec.shape_text()})"
            )


def to_array(value: Any, dtype: Any, field: str) -> np.ndarray:
    """JSON value -> array of `dtype`, with the reason in words when it cannot be one."""
    if dtype is np.object_:
        array = np.asarray(value, dtype=object)
        return array
    try:
        array = np.asarray(value)
    except (ValueError, OverflowError) as exc:
        raise BadRequestError(f"field {field!r}: not a rectangular array ({_short(exc)})") from None
    target = np.dtype(dtype)
    if array.dtype == object:
        if target.kind in "iuf" and array.size and all(type(item) is int for item in array.reshape(-1)):
            raise BadRequestError(f"field {field!r}: a value is out of range for {target.name}")
        raise BadRequestError(f"field {field!r}: not a rectangular array of numbers")
    if array.dtype.kind in ("U", "S"):
        raise BadRequestError(f"field {field!r}: expected {target.name} numbers, got strings")
    if (target.kind in "iu" and array.dtype.kind == "f") and (
        not np.all(np.isfinite(array)) or not np.all(np.mod(array, 1) == 0)
    ):
        raise BadRequestError(f"field {field!r}: expected {target.name} integers, got fractional numbers")
    if target.kind == "b" and array.dtype.kind != "b":
        raise BadRequestError(f"field {field!r}: expected booleans, got {array.dtype.name} values")
    _check_range(array, target, field)
    try:
        return array.astype(target, copy=False)
    except (ValueError, TypeError, OverflowError) as exc:
        raise BadRequestError(f"field {field!r}: cannot convert to {target.name}: {exc}") from None


def _check_range(array: np.ndarray, target: np.dtype, field: str) -> None:
    """Numbers the target type cannot hold are refused: numpy would make 300 a UINT8 44 and 1e10
    an FP16 infinity without a word, a wrong answer with a 200."""
    if not array.size or array.dtype.kind not in "iuf":
        return
    if target.kind in "iu":
        limits = np.iinfo(target)
        # As Python numbers: comparing numpy integers of other widths may overflow.
        convert = float if array.dtype.kind == "f" else int
        if convert(array.min()) < limits.min or convert(array.max()) > limits.max:
            raise BadRequestError(
                f"field {field!r}: a value is out of range for {target.name} ({limits.min}..{limits.max})"
            )
    elif target.kind == "f" and (array.dtype.kind != "f" or array.dtype.itemsize > target.itemsize):
        with np.errstate(over="ignore"):
            overflowed = np.isinf(array.astype(target)) & np.isfinite(array)
        if overflowed.any():
            raise BadRequestError(
                f"field {field!r}: a value is out of range for {target.name} "
                f"(largest {float(np.finfo(target).max):g})"
            )


def _short(exc: Exception) -> str:
    text = str(exc)
    return text if len(text) < 160 else text[:157] + "..."
