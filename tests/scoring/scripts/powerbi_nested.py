"""The documented Power BI / AutoML shape with the real inference-schema package: `Inputs` is a
StandardPythonParameterType over a DataFrame and an array, `GlobalParameters` over plain values."""

import numpy as np
import pandas as pd
from inference_schema.parameter_types.numpy_parameter_type import NumpyParameterType
from inference_schema.parameter_types.pandas_parameter_type import PandasParameterType
from inference_schema.parameter_types.standard_py_parameter_type import StandardPythonParameterType
from inference_schema.schema_decorators import input_schema, output_schema

FRAME = pd.DataFrame({"age": [42], "income": [51000.5], "city": ["Oslo"]})
ARRAY = np.array([[1.0, 2.0, 3.0]], dtype=np.float32)
INPUTS = StandardPythonParameterType({"data": PandasParameterType(FRAME), "extra": NumpyParameterType(ARRAY)})
GLOBALS = StandardPythonParameterType({"method": "predict", "threshold": 0.5})


def init():
    pass


def describe(value):
    if isinstance(value, pd.DataFrame):
        return {
            "type": "DataFrame",
            "records": value.to_dict("records"),
            "dtypes": value.dtypes.astype(str).to_dict(),
        }
    if isinstance(value, np.ndarray):
        return {"type": "ndarray", "dtype": str(value.dtype), "value": value.tolist()}
    if isinstance(value, dict):
        return {"type": "dict", "items": {key: describe(item) for key, item in value.items()}}
    return {"type": type(value).__name__, "value": value}


@input_schema("Inputs", INPUTS)
@input_schema("GlobalParameters", GLOBALS)
@output_schema(StandardPythonParameterType({"Results": [0.5]}))
def run(Inputs, GlobalParameters):
    return {"Inputs": describe(Inputs), "GlobalParameters": describe(GlobalParameters)}
