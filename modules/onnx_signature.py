"""What an ONNX graph takes and returns, recorded at registration so nobody has to load it later.

The scoring host derives its zero-code schema from this, and `model show` prints it.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict

from modules._errors import InvalidModelError


class TensorSpec(BaseModel):
    model_config = ConfigDict(defer_build=True)

    name: str
    dtype: str  # numpy-style name: float32, int64, string, ...
    shape: list[int | str | None]  # int = fixed, str = symbolic (e.g. "batch"), None = unknown


class OnnxSignature(BaseModel):
    model_config = ConfigDict(defer_build=True)

    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    opsets: dict[str, int]  # domain ("" is the default ai.onnx domain) -> version
    ir_version: int
    producer: str | None = None


def _tensor_spec(value_info: object) -> TensorSpec:
    from onnx import TensorProto, helper

    ttype = value_info.type  # type: ignore[attr-defined]
    kind = ttype.WhichOneof("value")
    if kind != "tensor_type":
        return TensorSpec(name=value_info.name, dtype=kind or "unknown", shape=[])  # type: ignore[attr-defined]
    elem = ttype.tensor_type.elem_type
    if elem == TensorProto.STRING:
        dtype = "string"
    else:
        try:
            dtype = str(helper.tensor_dtype_to_np_dtype(elem))
        except (KeyError, ValueError):
            dtype = TensorProto.DataType.Name(elem).lower()
    shape: list[int | str | None] = []
    for dim in ttype.tensor_type.shape.dim:
        if dim.HasField("dim_value"):
            shape.append(dim.dim_value)
        elif dim.HasField("dim_param"):
            shape.append(dim.dim_param)
        else:
            shape.append(None)
    return TensorSpec(name=value_info.name, dtype=dtype, shape=shape)  # type: ignore[attr-defined]


def inspect_onnx(path: Path) -> OnnxSignature:
    """Check the model with `onnx.checker` and read its signature; any failure is one clear error."""
    import onnx
    from google.protobuf.message import DecodeError

    try:
        model = onnx.load(str(path), load_external_data=False)
    except (DecodeError, ValueError, RuntimeError, UnicodeDecodeError) as exc:
        raise InvalidModelError(f"{path.name} is not a valid ONNX model: {_first_line(exc)}") from exc
    except OSError as exc:
        raise InvalidModelError(f"cannot read {path}: {exc.strerror or exc}") from exc
    try:
        onnx.checker.check_model(str(path))
    except (onnx.checker.ValidationError, ValueError, RuntimeError) as exc:
        raise InvalidModelError(f"{path.name} fails the ONNX checker: {_first_line(exc)}") from exc
    initializers = {init.name for init in model.graph.initializer}
    return OnnxSignature(
        inputs=[_tensor_spec(i) for i in model.graph.input if i.name not in initializers],
        outputs=[_tensor_spec(o) for o in model.graph.output],
        opsets={op.domain: op.version for op in model.opset_import},
        ir_version=model.ir_version,
        producer=model.producer_name or None,
    )


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:300]
