import json

import numpy as np
import pytest
import requests

from modules.scoring import NumpyParameterType, StandardPythonParameterType, input_schema
from modules.scoring._errors import BadRequestError

from .conftest import IRIS_DIR, SCRIPTS


@pytest.fixture
def numpy_script(serve_host):
    return serve_host(model_dir=IRIS_DIR, entry_script=SCRIPTS / "schema_numpy.py")


def test_inference_schema_script_gets_a_float32_numpy_array(numpy_script):
    response = requests.post(
        numpy_script.url + "/score",
        json={"data": [[5.1, 3.5, 1.4, 0.2], [6.3, 3.3, 6.0, 2.5]], "top": 2},
        timeout=30,
    )

    assert response.status_code == 200
    assert response.json() == {"labels": [0, 2], "dtype": "float32", "top": 2}


def test_optional_parameter_falls_back_to_its_default(numpy_script):
    response = requests.post(numpy_script.url + "/score", json={"data": [[1, 2, 3, 4]]}, timeout=30)

    assert response.status_code == 200
    assert response.json()["top"] == 1


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"top": 1}, "A value is not provided for the 'data' parameter."),
        ({"data": [[1.0, 2.0, 3.0]]}, "array has size 3 on dimension #1, while expected value is 4"),
        ({"data": [1.0, 2.0, 3.0, 4.0]}, "field 'data': Invalid input array: an array with 2"),
        ({"data": [["a", "b", "c", "d"]]}, "field 'data': could not convert string to float"),
    ],
)
def test_schema_mismatch_is_400_naming_the_field(numpy_script, body, message):
    response = requests.post(numpy_script.url + "/score", json=body, timeout=30)

    assert response.status_code == 400
    assert message in response.json()["message"]


def test_swagger_describes_the_decorated_inputs_and_output(numpy_script):
    numpy_script.wait_loaded()
    v2 = requests.get(numpy_script.url + "/swagger.json", timeout=5).json()
    v3 = requests.get(numpy_script.url + "/swagger.json?version=3", timeout=5).json()

    body = v2["definitions"]["ServiceInput"]
    assert body["properties"]["data"]["format"] == "numpy.ndarray"
    assert body["example"]["data"][0][0] == pytest.approx(5.1)
    assert "labels" in v2["definitions"]["ServiceOutput"]["properties"]
    assert v3["openapi"].startswith("3.")
    assert "data" in v3["components"]["schemas"]["ServiceInput"]["properties"]


def test_own_decorators_validate_nested_fields_and_pass_request_headers(serve_host):
    host = serve_host(model_dir=IRIS_DIR, entry_script=SCRIPTS / "schema_own.py")
    good = requests.post(
        host.url + "/score",
        json={"params": {"name": "s", "threshold": 1.5, "values": [1, 2, 3]}},
        headers={"X-Caller": "line-4"},
        timeout=30,
    )
    missing_key = requests.post(
        host.url + "/score", json={"params": {"name": "s", "values": [1]}}, timeout=30
    )
    wrong_type = requests.post(
        host.url + "/score",
        json={"params": {"name": "s", "threshold": "high", "values": [1]}},
        timeout=30,
    )

    assert good.status_code == 200
    assert good.json() == {"above": [2.0, 3.0], "caller": "line-4"}
    assert missing_key.status_code == 400
    assert missing_key.json()["message"] == "field 'params': missing key 'threshold'"
    assert wrong_type.status_code == 400
    assert "params.threshold" in wrong_type.json()["message"]


def test_own_numpy_type_reports_dimension_and_rank_mismatches():
    kind = NumpyParameterType(np.zeros((1, 4), dtype=np.float32))

    with pytest.raises(BadRequestError, match=r"dimension 1 has size 3, expected 4"):
        kind.deserialize([[1, 2, 3]], "data")
    with pytest.raises(BadRequestError, match=r"expected 2 dimensions \[N, 4\], got 1"):
        kind.deserialize([1, 2, 3, 4], "data")
    with pytest.raises(BadRequestError, match="got strings"):
        kind.deserialize([["a", "b", "c", "d"]], "data")
    assert kind.deserialize([[1, 2, 3, 4]], "data").dtype == np.float32


def test_decorated_run_called_directly_converts_like_the_host():
    @input_schema("values", NumpyParameterType(np.array([1], dtype=np.int64)))
    @input_schema("scale", StandardPythonParameterType(2.0))
    def run(values, scale):
        return values * scale

    result = run([1, 2, 3], 2)

    assert isinstance(result, np.ndarray)
    assert result.tolist() == [2.0, 4.0, 6.0]


def test_pandas_samples_accept_records_and_name_missing_columns():
    import pandas as pd

    from modules.scoring import PandasParameterType

    kind = PandasParameterType(pd.DataFrame({"a": [1.0], "b": ["x"]}))

    frame = kind.deserialize([{"a": 2, "b": "y"}], "frame")
    assert list(frame.columns) == ["a", "b"]
    with pytest.raises(BadRequestError, match="missing column 'b'"):
        kind.deserialize([{"a": 2}], "frame")


def test_nested_power_bi_inputs_are_converted_as_the_real_inference_schema_does(serve_host):
    """The same sample through the host and through the real package's own decorator."""
    import importlib.util

    script = SCRIPTS / "powerbi_nested.py"
    body = {
        "Inputs": {
            "data": [
                {"age": 30, "income": 1234.5, "city": "Bergen"},
                {"age": 7, "income": 0, "city": "Oslo"},
            ],
            "extra": [[4.0, 5.0, 6.0]],
        },
        "GlobalParameters": {"method": "predict_proba", "threshold": 0.25},
    }
    spec = importlib.util.spec_from_file_location("powerbi_nested_reference", script)
    reference = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(reference)
    expected = json.loads(json.dumps(reference.run(**json.loads(json.dumps(body))), default=str))
    assert expected["Inputs"]["items"]["data"]["type"] == "DataFrame"  # the package converts it

    host = serve_host(model_dir=IRIS_DIR, entry_script=script)
    assert host.wait_loaded()["status"] == "Healthy"
    response = requests.post(host.url + "/score", json=body, timeout=30)

    assert response.status_code == 200, response.text
    assert response.json() == expected
