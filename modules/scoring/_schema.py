"""Input/output schemas for `run()`, in the style of Microsoft's `inference-schema`.

Two sources end up in one `RunSchema`: this module's own decorators, and the real
`inference_schema` package's (its wrapt wrappers carry the parameter types in their closures).
The host then validates and converts the body itself, before `run()`, so a malformed request is a
400 naming the field and never a 500 from inside the decorator.
"""

from __future__ import annotations

import datetime as dt
import functools
import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ._errors import BadRequestError
from ._tensors import to_array

_SCHEMA_ATTR = "__modelfleet_schema__"


class ParameterType:
    """A sample-based description of one value; subclasses check and convert JSON input."""

    def __init__(self, sample_input: Any) -> None:
        self.sample_input = sample_input
        self.sample_data_type = type(sample_input)

    def deserialize(self, value: Any, field_name: str) -> Any:
        raise NotImplementedError

    def to_swagger(self) -> dict[str, Any]:
        raise NotImplementedError

    # The real package's method names, so either kind of type plugs into either code path.
    def deserialize_input(self, input_data: Any) -> Any:
        return self.deserialize(input_data, "input")

    def input_to_swagger(self) -> dict[str, Any]:
        return self.to_swagger()


def _scalar_swagger(dtype: np.dtype) -> dict[str, Any]:
    if dtype.names:
        return {
            "type": "object",
            "properties": {name: _scalar_swagger(dtype[name]) for name in dtype.names},
        }
    if dtype.kind == "f":
        return {"type": "number", "format": "float" if dtype.itemsize <= 4 else "double"}
    if dtype.kind in "iu":
        return {"type": "integer", "format": "int64" if dtype.itemsize == 8 else "int32"}
    if dtype.kind == "b":
        return {"type": "boolean"}
    if dtype.kind == "M":
        return {"type": "string", "format": "date-time"}
    return {"type": "string"}


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, dict):
        return {key: _jsonable(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(item) for item in value]
    if isinstance(value, ParameterType):
        return _jsonable(value.sample_input)
    return value


class NumpyParameterType(ParameterType):
    """An array shaped like the sample: same rank, same sizes after the first (batch) axis."""

    def __init__(
        self, sample_input: np.ndarray, enforce_column_type: bool = True, enforce_shape: bool = True
    ) -> None:
        if not isinstance(sample_input, np.ndarray):
            raise TypeError("NumpyParameterType needs a numpy array as its sample")
        super().__init__(sample_input)
        self.enforce_column_type = enforce_column_type
        self.enforce_shape = enforce_shape

    def deserialize(self, value: Any, field_name: str) -> np.ndarray:
        if isinstance(value, np.ndarray):
            return value
        sample = self.sample_input
        if sample.ndim > 0 and not isinstance(value, list):
            raise BadRequestError(f"field {field_name!r}: expected an array, got {type(value).__name__}")
        if sample.dtype.names and self.enforce_column_type:
            array = self._records(value, field_name)
        elif self.enforce_column_type:
            array = to_array(value, sample.dtype, field_name)
        else:
            array = to_array(value, np.asarray(value).dtype, field_name)
        if self.enforce_shape:
            if array.ndim != sample.ndim:
                raise BadRequestError(
                    f"field {field_name!r}: expected {sample.ndim} dimensions "
                    f"{self._shape_text()}, got {array.ndim} (shape {list(array.shape)})"
                )
            for axis in range(1, sample.ndim):
                if array.shape[axis] != sample.shape[axis]:
                    raise BadRequestError(
                        f"field {field_name!r}: dimension {axis} has size {array.shape[axis]}, "
                        f"expected {sample.shape[axis]} (shape {self._shape_text()})"
                    )
        return array

    def _records(self, value: list[Any], field_name: str) -> np.ndarray:
        names = self.sample_input.dtype.names or ()
        rows = []
        for index, item in enumerate(value):
            if isinstance(item, dict):
                missing = [name for name in names if name not in item]
                if missing:
                    raise BadRequestError(f"field {field_name!r}: item {index} lacks column {missing[0]!r}")
                rows.append(tuple(item[name] for name in names))
            else:
                rows.append(tuple(item))
        try:
            return np.array(rows, dtype=self.sample_input.dtype)
        except (ValueError, TypeError) as exc:
            raise BadRequestError(f"field {field_name!r}: {exc}") from None

    def _shape_text(self) -> str:
        dims = ["N", *(str(d) for d in self.sample_input.shape[1:])]
        return "[" + ", ".join(dims[: self.sample_input.ndim]) + "]"

    def to_swagger(self) -> dict[str, Any]:
        schema: dict[str, Any] = _scalar_swagger(self.sample_input.dtype)
        for _ in range(self.sample_input.ndim):
            schema = {"type": "array", "items": schema}
        schema["format"] = "numpy.ndarray"
        schema["example"] = _jsonable(self.sample_input)
        return schema


class StandardPythonParameterType(ParameterType):
    """Plain JSON values shaped like the sample; dict samples may nest other parameter types."""

    def deserialize(self, value: Any, field_name: str) -> Any:
        return _check_standard(self.sample_input, value, field_name)

    def to_swagger(self) -> dict[str, Any]:
        schema = _standard_swagger(self.sample_input)
        schema["example"] = _jsonable(self.sample_input)
        return schema


def _check_standard(sample: Any, value: Any, where: str) -> Any:
    if isinstance(sample, ParameterType):
        return sample.deserialize(value, where)
    if isinstance(sample, bool):
        if not isinstance(value, bool):
            raise BadRequestError(f"field {where!r}: expected a boolean, got {_kind(value)}")
        return value
    if isinstance(sample, int | float):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise BadRequestError(f"field {where!r}: expected a number, got {_kind(value)}")
        if isinstance(sample, int) and isinstance(value, float) and not value.is_integer():
            raise BadRequestError(f"field {where!r}: expected an integer, got {value}")
        return type(sample)(value)
    if isinstance(sample, str):
        if not isinstance(value, str):
            raise BadRequestError(f"field {where!r}: expected a string, got {_kind(value)}")
        return value
    if isinstance(sample, dict):
        if not isinstance(value, dict):
            raise BadRequestError(f"field {where!r}: expected an object, got {_kind(value)}")
        result = dict(value)
        for key, sub_sample in sample.items():
            if key not in value:
                raise BadRequestError(f"field {where!r}: missing key {key!r}")
            result[key] = _check_standard(sub_sample, value[key], f"{where}.{key}")
        return result
    if isinstance(sample, list | tuple):
        if not isinstance(value, list):
            raise BadRequestError(f"field {where!r}: expected an array, got {_kind(value)}")
        if sample and all(type(item) is type(sample[0]) for item in sample):
            return [_check_standard(sample[0], item, f"{where}[{index}]") for index, item in enumerate(value)]
        return value
    return value


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    return {
        bool: "a boolean",
        int: "a number",
        float: "a number",
        str: "a string",
        list: "an array",
        dict: "an object",
    }.get(type(value), type(value).__name__)


def _standard_swagger(sample: Any) -> dict[str, Any]:
    if isinstance(sample, ParameterType):
        return sample.to_swagger()
    if isinstance(sample, bool):
        return {"type": "boolean"}
    if isinstance(sample, int):
        return {"type": "integer", "format": "int64"}
    if isinstance(sample, float):
        return {"type": "number", "format": "double"}
    if isinstance(sample, str):
        return {"type": "string"}
    if isinstance(sample, dt.datetime):
        return {"type": "string", "format": "date-time"}
    if isinstance(sample, dict):
        return {
            "type": "object",
            "required": list(sample),
            "properties": {key: _standard_swagger(value) for key, value in sample.items()},
        }
    if isinstance(sample, list | tuple):
        return {"type": "array", "items": _standard_swagger(sample[0]) if sample else {}}
    return {"type": "object"}


class PandasParameterType(ParameterType):
    """A DataFrame given as records (`[{col: value}, ...]`) or as columns (`{col: [...]}`)."""

    def __init__(
        self,
        sample_input: Any,
        enforce_column_type: bool = True,
        enforce_shape: bool = True,
        apply_column_names: bool = False,
        orient: str = "records",
    ) -> None:
        super().__init__(sample_input)
        self.enforce_column_type = enforce_column_type
        self.enforce_shape = enforce_shape
        self.orient = orient

    def deserialize(self, value: Any, field_name: str) -> Any:
        import pandas as pd

        if isinstance(value, pd.DataFrame):
            return value
        if not isinstance(value, list | dict):
            raise BadRequestError(f"field {field_name!r}: expected records or columns, got {_kind(value)}")
        try:
            frame = pd.DataFrame(value)
        except (ValueError, TypeError) as exc:
            raise BadRequestError(f"field {field_name!r}: {exc}") from None
        sample = self.sample_input
        if self.enforce_shape:
            missing = [str(c) for c in sample.columns if c not in frame.columns]
            if missing:
                raise BadRequestError(f"field {field_name!r}: missing column {missing[0]!r}")
            frame = frame[list(sample.columns)]
        if self.enforce_column_type:
            for column, dtype in sample.dtypes.items():
                if column not in frame.columns:
                    continue
                try:
                    frame[column] = frame[column].astype(dtype)
                except (ValueError, TypeError) as exc:
                    raise BadRequestError(
                        f"field {field_name!r}: column {column!r} is not {dtype}: {exc}"
                    ) from None
        return frame

    def to_swagger(self) -> dict[str, Any]:
        properties = {
            str(column): _scalar_swagger(np.dtype(dtype) if dtype is not object else np.dtype("U1"))
            for column, dtype in self.sample_input.dtypes.items()
        }
        return {
            "type": "array",
            "items": {"type": "object", "required": list(properties), "properties": properties},
            "format": "pandas.DataFrame:records",
            "example": _jsonable(self.sample_input.to_dict(orient="records")),
        }


@dataclass(frozen=True)
class InputParam:
    name: str
    param_type: Any  # ours or the real package's AbstractParameterType
    convert: bool = True
    optional: bool = False

    def deserialize(self, value: Any) -> Any:
        if not self.convert:
            return value
        if isinstance(self.param_type, ParameterType):
            return self.param_type.deserialize(value, self.name)
        return _convert_foreign(value, self.param_type, self.name)


def _convert_foreign(value: Any, param_type: Any, where: str) -> Any:
    """Convert a value for one of the real inference_schema package's types, as its decorator
    does: a dict sample converts the keys whose sample is itself a parameter type (Power BI's
    `Inputs` of a DataFrame, AutoML's nested Numpy/Pandas inputs), a list sample converts each
    item with its first item's type, and anything else goes through `deserialize_input` unless
    it already has the sample's type. The type's own `deserialize_input` alone never recurses."""
    sample_type = getattr(param_type, "sample_data_type", None)
    try:
        if sample_type is dict:
            if not isinstance(value, dict):
                raise BadRequestError(f"field {where!r}: expected an object, got {_kind(value)}")
            converted = dict(value)
            for key, item_type in (getattr(param_type, "sample_data_type_map", None) or {}).items():
                if key in converted:
                    converted[key] = _convert_foreign(converted[key], item_type, f"{where}.{key}")
            return converted
        if sample_type in (list, tuple):
            if not isinstance(value, list | tuple):
                raise BadRequestError(f"field {where!r}: expected an array, got {_kind(value)}")
            item_types = getattr(param_type, "sample_data_type_list", None) or []
            if item_types:
                return [_convert_foreign(item, item_types[0], where) for item in value]
            return value
        if sample_type is not None and isinstance(value, sample_type):
            return value
        return param_type.deserialize_input(value)
    except BadRequestError:
        raise
    except Exception as exc:  # the real package raises bare Exception/ValueError
        raise BadRequestError(f"field {where!r}: {exc}") from None


@dataclass
class RunSchema:
    """What `run()` declares: its inputs by name, the function to call, and its swagger parts."""

    target: Callable[..., Any]
    inputs: dict[str, InputParam] = field(default_factory=dict)
    input_swagger: dict[str, Any] | None = None
    output_swagger: dict[str, Any] | None = None

    def convert(self, arguments: dict[str, Any]) -> dict[str, Any]:
        converted = dict(arguments)
        for name, param in self.inputs.items():
            if name in converted and not (param.optional and converted[name] is None):
                converted[name] = param.deserialize(converted[name])
        return converted


def input_schema(
    param_name: str,
    param_type: ParameterType,
    convert_to_provided_type: bool = True,
    optional: bool = False,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Declare the schema of one `run()` parameter (same signature as inference_schema's)."""
    if not isinstance(param_type, ParameterType):
        raise TypeError("input_schema needs one of modelfleet's parameter types")

    def decorate(func: Callable[..., Any]) -> Callable[..., Any]:
        schema = _own_schema(func)
        if param_name not in inspect.signature(schema.target).parameters:
            raise TypeError(f"run() has no parameter named {param_name!r}")
        schema.inputs[param_name] = InputParam(param_name, param_type, convert_to_provided_type, optional)
        return _wrap(schema)

    return decorate


def output_schema(output_type: ParameterType) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Declare what `run()` returns, for the OpenAPI document."""
    if not isinstance(output_type, ParameterType):
        raise TypeError("output_schema needs one of modelfleet's parameter types")

    def decorate(func: Callable[..., Any]) -> Callable[..., Any]:
        schema = _own_schema(func)
        schema.output_swagger = output_type.to_swagger()
        return _wrap(schema)

    return decorate


def _own_schema(func: Callable[..., Any]) -> RunSchema:
    existing: RunSchema | None = getattr(func, _SCHEMA_ATTR, None)
    if existing is None:
        return RunSchema(target=func)
    return RunSchema(existing.target, dict(existing.inputs), None, existing.output_swagger)


def _wrap(schema: RunSchema) -> Callable[..., Any]:
    signature = inspect.signature(schema.target)

    @functools.wraps(schema.target)
    def run_with_conversion(*args: Any, **kwargs: Any) -> Any:
        # Called directly (e.g. from a script's own tests): convert like the host would.
        bound = signature.bind(*args, **kwargs)
        converted = schema.convert(dict(bound.arguments))
        return schema.target(**converted)

    setattr(run_with_conversion, _SCHEMA_ATTR, schema)
    return run_with_conversion


def _input_swagger(inputs: dict[str, InputParam]) -> dict[str, Any]:
    properties = {name: param.param_type.input_to_swagger() for name, param in inputs.items()}
    example = {name: prop.get("example") for name, prop in properties.items() if "example" in prop}
    return {
        "type": "object",
        "required": [name for name, param in inputs.items() if not param.optional],
        "properties": properties,
        "example": example,
    }


def schema_of(run: Callable[..., Any]) -> RunSchema | None:
    """The declared schema of `run`, from our decorators or the real inference_schema's."""
    own: RunSchema | None = getattr(run, _SCHEMA_ATTR, None)
    if own is not None:
        return RunSchema(own.target, own.inputs, _input_swagger(own.inputs), own.output_swagger)
    if not hasattr(run, "_self_wrapper"):  # not a wrapt wrapper: not inference_schema
        return None
    inputs: dict[str, InputParam] = {}
    target: Any = run
    while hasattr(target, "_self_wrapper"):
        wrapper = target._self_wrapper
        cells = dict(
            zip(
                wrapper.__code__.co_freevars,
                (cell.cell_contents for cell in (wrapper.__closure__ or ())),
                strict=True,
            )
        )
        if "param_name" in cells and "param_type" in cells:
            name = cells["param_name"]
            inputs.setdefault(
                name,
                InputParam(
                    name,
                    cells["param_type"],
                    bool(cells.get("convert_to_provided_type", True)),
                    bool(cells.get("optional", False)),
                ),
            )
        target = target.__wrapped__
    from inference_schema.schema_util import (
        get_input_schema,
        get_output_schema,
        is_schema_decorated,
    )

    if not is_schema_decorated(run):
        return None
    return RunSchema(
        target=target,
        inputs=inputs,
        input_swagger=get_input_schema(run) or None,
        output_swagger=get_output_schema(run) or None,
    )
