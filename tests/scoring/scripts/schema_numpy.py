"""Decorated with the real inference_schema package, as Azure ML documents it."""

import os

import numpy as np
import onnxruntime as ort
from inference_schema.parameter_types.numpy_parameter_type import NumpyParameterType
from inference_schema.parameter_types.standard_py_parameter_type import (
    StandardPythonParameterType,
)
from inference_schema.schema_decorators import input_schema, output_schema

session = None


def init():
    global session
    session = ort.InferenceSession(
        os.path.join(os.environ["AZUREML_MODEL_DIR"], "model.onnx"),
        providers=["CPUExecutionProvider"],
    )


@input_schema("data", NumpyParameterType(np.array([[5.1, 3.5, 1.4, 0.2]], dtype=np.float32)))
@input_schema("top", StandardPythonParameterType(1), optional=True)
@output_schema(StandardPythonParameterType({"labels": [0], "dtype": "float32"}))
def run(data, top=1):
    labels, _ = session.run(None, {"input": data})
    return {"labels": labels.tolist(), "dtype": str(data.dtype), "top": top}
