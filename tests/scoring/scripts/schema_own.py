"""Decorated with modelfleet's own inference_schema-style decorators; takes request headers."""

from modules.scoring import StandardPythonParameterType, input_schema, output_schema


def init():
    pass


@input_schema(
    "params",
    StandardPythonParameterType({"name": "sensor-1", "threshold": 0.5, "values": [1.0, 2.0]}),
)
@output_schema(StandardPythonParameterType({"above": [2.0], "caller": "x"}))
def run(params, request_headers):
    above = [v for v in params["values"] if v > params["threshold"]]
    return {"above": above, "caller": request_headers.get("X-Caller", "")}
