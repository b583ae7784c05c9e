"""The real inference-schema package with standard Python types, an optional input and the
request headers, as Azure ML documents it."""

from inference_schema.parameter_types.standard_py_parameter_type import StandardPythonParameterType
from inference_schema.schema_decorators import input_schema, output_schema


def init():
    pass


@input_schema("reading", StandardPythonParameterType({"sensor": "s-1", "values": [1.0, 2.0]}))
@input_schema("scale", StandardPythonParameterType(1.0), optional=True)
@output_schema(StandardPythonParameterType({"sensor": "s-1", "total": 3.0, "caller": "x"}))
def run(reading, scale=1.0, request_headers=None):
    total = sum(reading["values"]) * scale
    return {"sensor": reading["sensor"], "total": total, "caller": (request_headers or {}).get("X-Caller")}
