"""KServe's V1 protocol (TensorFlow Serving's REST API) on a real host over a real port.

The CNN example model answers the same numbers over V1 (row and columnar format) as over v2;
tiny ONNX models built here with the onnx helper API cover several inputs and outputs and
string tensors; entry-script hosts answer as their v2 `infer` does. Every malformed request is a
4xx with a JSON `{"error": ...}`, never a 500 and never a wrong answer with a 200.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import onnx
import pytest
import requests
from onnx import TensorProto, helper

from modules.scoring._errors import BadRequestError
from modules.scoring._tensors import TensorSpec
from modules.scoring._v1_protocol import PredictRequest, decode_predict, encode_predictions

from .conftest import CNN_DIR, IRIS_DIR, SCRIPTS
from .test_v2_strictness import _string_model

IMAGES = np.random.default_rng(7).random((3, 1, 28, 28), dtype=np.float32)


@pytest.fixture
def cnn(serve_host):
    host = serve_host(model_dir=CNN_DIR)
    assert host.wait_loaded()["status"] == "Healthy"
    return host


def _two_by_three_model(folder: Path) -> Path:
    """`a`, `b` (FP32 [N, 2]) and `k` (UINT8 [N]) -> `total` = a + b, `top` = argmax(total) per
    row (INT64 [N]) and `k` back unchanged as `same_k`: three inputs and three outputs of three
    element types, so names, stacking and types all show in the answer."""
    graph = helper.make_graph(
        [
            helper.make_node("Add", ["a", "b"], ["total"]),
            helper.make_node("ArgMax", ["total"], ["top"], axis=1, keepdims=0),
            helper.make_node("Identity", ["k"], ["same_k"]),
        ],
        "two_by_three",
        [
            helper.make_tensor_value_info("a", TensorProto.FLOAT, ["N", 2]),
            helper.make_tensor_value_info("b", TensorProto.FLOAT, ["N", 2]),
            helper.make_tensor_value_info("k", TensorProto.UINT8, ["N"]),
        ],
        [
            helper.make_tensor_value_info("total", TensorProto.FLOAT, ["N", 2]),
            helper.make_tensor_value_info("top", TensorProto.INT64, ["N"]),
            helper.make_tensor_value_info("same_k", TensorProto.UINT8, ["N"]),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    folder.mkdir(parents=True, exist_ok=True)
    onnx.save(model, folder / "pairs.onnx")
    return folder


@pytest.fixture
def pairs(serve_host, tmp_path: Path):
    host = serve_host(model_dir=_two_by_three_model(tmp_path / "pairs"))
    assert host.wait_loaded()["status"] == "Healthy"
    return host


@pytest.fixture
def upper(serve_host, tmp_path: Path):
    host = serve_host(model_dir=_string_model(tmp_path / "upper"), model_name="upper")
    assert host.wait_loaded()["status"] == "Healthy"
    return host


def _predict(host, model: str, document: object = None, data: bytes | None = None, **kwargs):
    body = data if data is not None else json.dumps(document).encode()
    return requests.post(f"{host.url}/v1/models/{model}:predict", data=body, timeout=30, **kwargs)


def _ok(response: requests.Response) -> dict:
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"] == "application/json"
    return response.json()


def _v2_probabilities(host, images: np.ndarray) -> list:
    tensor = {"name": "input", "shape": list(images.shape), "datatype": "FP32", "data": images.tolist()}
    response = requests.post(host.url + "/v2/models/cnn/infer", json={"inputs": [tensor]}, timeout=30)
    (output,) = _ok(response)["outputs"]
    assert output["name"] == "probabilities"
    return np.asarray(output["data"], dtype=np.float32).reshape(output["shape"]).tolist()


def test_cnn_instances_answer_what_v2_answers(cnn) -> None:
    predictions = _ok(_predict(cnn, "cnn", {"instances": IMAGES.tolist()}))["predictions"]

    assert len(predictions) == 3 and all(len(row) == 10 for row in predictions)
    assert np.asarray(predictions, dtype=np.float32).tolist() == _v2_probabilities(cnn, IMAGES)
    assert all(math.isclose(sum(row), 1.0, rel_tol=1e-4) for row in predictions)


def test_cnn_columnar_inputs_answer_what_v2_answers(cnn) -> None:
    wanted = _v2_probabilities(cnn, IMAGES)

    bare = _ok(_predict(cnn, "cnn", {"inputs": IMAGES.tolist()}))
    named = _ok(_predict(cnn, "cnn", {"inputs": {"input": IMAGES.tolist()}}))

    assert np.asarray(bare["outputs"], dtype=np.float32).tolist() == wanted
    assert named == bare
    # A single image is a batch of one, whichever format asks for it.
    one = _ok(_predict(cnn, "cnn", {"instances": IMAGES[:1].tolist(), "signature_name": "serving_default"}))
    assert np.asarray(one["predictions"], dtype=np.float32).tolist() == _v2_probabilities(cnn, IMAGES[:1])


def test_several_inputs_and_outputs_by_name_in_both_formats(pairs) -> None:
    instances = [
        {"a": [1.0, 5.0], "b": [0.5, 0.5], "k": 7},
        {"a": [9.0, 1.0], "b": [0.0, 1.0], "k": 255},
    ]
    rows = _ok(_predict(pairs, "pairs", {"instances": instances}))
    assert rows == {
        "predictions": [
            {"total": [1.5, 5.5], "top": 1, "same_k": 7},
            {"total": [9.0, 2.0], "top": 0, "same_k": 255},
        ]
    }

    columns = {"a": [[1.0, 5.0], [9.0, 1.0]], "b": [[0.5, 0.5], [0.0, 1.0]], "k": [7, 255]}
    columnar = _ok(_predict(pairs, "pairs", {"inputs": columns}))
    assert columnar == {"outputs": {"total": [[1.5, 5.5], [9.0, 2.0]], "top": [1, 0], "same_k": [7, 255]}}


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ({"instances": [[1.0, 2.0]]}, "the model has 3 inputs (a, b, k)"),
        ({"inputs": [[1.0, 2.0]]}, "the model has 3 inputs (a, b, k)"),
        ({"instances": [{"a": [1, 2], "b": [1, 2]}]}, "missing input 'k'"),
        ({"instances": [{"a": [1, 2], "b": [1, 2], "k": 1, "z": 0}]}, "model has no input named 'z'"),
        (
            {"instances": [{"a": [1, 2], "b": [1, 2], "k": 1}, {"a": [1, 2], "b": [1, 2]}]},
            "instances[1] names inputs ['a', 'b'], instances[0] names ['a', 'b', 'k']",
        ),
        ({"instances": [{"a": [1, 2], "b": [1, 2], "k": 1}, [1, 2]]}, "instances[0] is an object but"),
        ({"instances": [{"a": [1, 2], "b": [1, 2], "k": 300}]}, "out of range for uint8 (0..255)"),
        ({"instances": [{"a": [1, 2], "b": [1, 2], "k": -1}]}, "out of range for uint8"),
        ({"instances": [{"a": [1, 2], "b": [1, 2], "k": 2.5}]}, "expected uint8 integers"),
        ({"instances": [{"a": [1, 2], "b": [1, 2], "k": 2**70}]}, "out of range for uint8"),
        ({"instances": [{"a": [1, 2, 3], "b": [1, 2], "k": 1}]}, "field 'a': dimension 1 has size 3"),
    ],
)
def test_several_inputs_refuse_what_does_not_fit(pairs, document: dict, message: str) -> None:
    response = _predict(pairs, "pairs", document)

    assert response.headers["Content-Type"] == "application/json"
    assert response.status_code == 400, response.text
    assert message in response.json()["error"]


def test_strings_reach_a_string_input_as_text_and_come_back_as_text(upper) -> None:
    words = ["héllo", "World", "ß"]

    rows = _ok(_predict(upper, "upper", {"instances": words}))
    bare = _ok(_predict(upper, "upper", {"inputs": words}))
    named = _ok(_predict(upper, "upper", {"inputs": {"text": words}}))

    assert rows == {
        "predictions": [
            {"echo": "héllo", "is_hello": True},
            {"echo": "World", "is_hello": False},
            {"echo": "ß", "is_hello": False},
        ]
    }
    assert bare == named == {"outputs": {"echo": words, "is_hello": [True, False, False]}}
    for refused in ({"instances": [1, 2]}, {"instances": ["a", None]}, {"inputs": [["a"], "b"]}):
        response = _predict(upper, "upper", refused)
        assert response.status_code == 400, response.text
        assert response.json()["error"] == "field 'text': expected a rectangular array of strings"


MALFORMED: dict[str, bytes] = {
    "empty body": b"",
    "whitespace body": b"  \n",
    "not JSON": b"{instances: [1]}",
    "not UTF-8": b'{"instances": ["\xff\xfe"]}',
    "a JSON array": b"[[1, 2]]",
    "a JSON string": b'"instances"',
    "neither instances nor inputs": b'{"signature_name": "serving_default"}',
    "both instances and inputs": b'{"instances": [1], "inputs": [1]}',
    "an unknown key": b'{"instances": [1], "examples": [1]}',
    "an unknown signature": b'{"instances": [1], "signature_name": "predict_images"}',
    "instances not an array": b'{"instances": {"input": 1}}',
    "instances empty": b'{"instances": []}',
    "instances null": b'{"instances": null}',
    "ragged instances": json.dumps({"instances": [IMAGES[0].tolist(), [[[1.0]]]]}).encode(),
    "instance of the wrong shape": json.dumps({"instances": [IMAGES[0, :, :27].tolist()]}).encode(),
    "one image without its batch axis": json.dumps({"inputs": IMAGES[0].tolist()}).encode(),
    "strings for FP32": json.dumps({"instances": [[[["x"] * 28] * 28]]}).encode(),
    "null for FP32": json.dumps({"inputs": None}).encode(),
    "an unknown input name": json.dumps({"inputs": {"image": IMAGES.tolist()}}).encode(),
    "deeply nested": b'{"instances": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_v1_requests_are_4xx_json_errors(cnn, case: str) -> None:
    response = _predict(cnn, "cnn", data=MALFORMED[case])

    assert 400 <= response.status_code < 500, (response.status_code, response.text)
    assert response.headers["Content-Type"] == "application/json"
    error = response.json()["error"]
    assert isinstance(error, str) and error


def test_unknown_model_is_404_on_every_v1_route(cnn) -> None:
    for response in (
        requests.get(cnn.url + "/v1/models/resnet", timeout=5),
        _predict(cnn, "resnet", {"instances": IMAGES.tolist()}),
    ):
        assert response.status_code == 404
        assert response.headers["Content-Type"] == "application/json"
        assert response.json() == {"error": "unknown model 'resnet'; this host serves 'cnn'"}


def test_listing_readiness_and_route_matching(cnn) -> None:
    assert requests.get(cnn.url + "/v1/models", timeout=5).json() == {"models": ["cnn"]}
    ready = requests.get(cnn.url + "/v1/models/cnn", timeout=5)
    assert (ready.status_code, ready.json()) == (200, {"name": "cnn", "ready": True})
    # The colon ends the name: neither route takes the other's requests for its own.
    wrong_verb = requests.get(cnn.url + "/v1/models/cnn:predict", timeout=5)
    assert wrong_verb.status_code == 405 and "error" in wrong_verb.json()
    assert requests.post(cnn.url + "/v1/models/cnn", json={"instances": [1]}, timeout=5).status_code == 405
    unknown_verb = requests.post(cnn.url + "/v1/models/cnn:explain", json={}, timeout=5)
    assert unknown_verb.status_code == 404 and "error" in unknown_verb.json()
    # Requests are counted under the route template, not the model's name.
    metrics = requests.get(cnn.url + "/metrics", timeout=5).text
    assert 'route="/v1/models/{name}"' in metrics


def test_a_failed_load_is_503_with_ready_false(serve_host) -> None:
    host = serve_host(model_dir=IRIS_DIR, entry_script=SCRIPTS / "failing_init.py", model_name="iris")
    assert host.wait_loaded()["status"] == "Unhealthy"

    ready = requests.get(host.url + "/v1/models/iris", timeout=5)
    predict = _predict(host, "iris", {"inputs": {"data": [[1.0, 2.0, 3.0, 4.0]]}})

    assert (ready.status_code, ready.json()) == (503, {"name": "iris", "ready": False})
    assert predict.status_code == 503
    assert predict.json()["error"].startswith("not ready: init failed")


def test_the_key_opens_predict_and_the_listing_but_readiness_needs_none(serve_host) -> None:
    host = serve_host(model_dir=CNN_DIR, primary_key="one", secondary_key="two")
    host.wait_loaded()
    body = {"instances": IMAGES[:1].tolist()}

    assert requests.get(host.url + "/v1/models/cnn", timeout=5).status_code == 200
    for response in (_predict(host, "cnn", body), requests.get(host.url + "/v1/models", timeout=5)):
        assert response.status_code == 401
        assert response.headers["WWW-Authenticate"] == "Bearer"
        assert response.json() == {"error": "missing or invalid key"}
    assert _predict(host, "cnn", body, headers={"Authorization": "Bearer wrong"}).status_code == 401
    for key in ("one", "two"):
        answer = _ok(_predict(host, "cnn", body, headers={"Authorization": f"Bearer {key}"}))
        assert len(answer["predictions"]) == 1
    listing = requests.get(host.url + "/v1/models", headers={"Authorization": "Bearer one"}, timeout=5)
    assert listing.json() == {"models": ["cnn"]}


def test_entry_scripts_answer_v1_as_their_v2_infer_does(serve_host) -> None:
    schema = serve_host(model_dir=IRIS_DIR, entry_script=SCRIPTS / "schema_numpy.py", model_name="iris")
    assert schema.wait_loaded()["status"] == "Healthy"
    rows = [[5.1, 3.5, 1.4, 0.2], [6.3, 3.3, 6.0, 2.5]]

    # The script declares `data` as FP32 [N, 4]: bare values are that input, typed as declared.
    columnar = _ok(_predict(schema, "iris", {"inputs": rows}))
    assert columnar == {"outputs": {"labels": [0, 2], "dtype": "float32", "top": 1}}
    # Its `dtype` and `top` are not per instance, so row format cannot split them.
    by_row = _predict(schema, "iris", {"instances": rows})
    assert by_row.status_code == 400
    assert "output 'dtype' has shape []" in by_row.json()["error"]
    assert "columnar format" in by_row.json()["error"]

    echo = serve_host(model_dir=IRIS_DIR, entry_script=SCRIPTS / "echo_json.py", model_name="echo")
    assert echo.wait_loaded()["status"] == "Healthy"
    assert _ok(_predict(echo, "echo", {"instances": [{"x": 1}, {"x": 2}]})) == {"predictions": [1, 2]}
    assert _ok(_predict(echo, "echo", {"inputs": {"x": ["a", "b"], "y": [True]}})) == {
        "outputs": {"x": ["a", "b"], "y": [True]}
    }
    # NaN/Infinity in the answer keep the standard library's spelling, as on v2.
    spelled = _predict(echo, "echo", data=b'{"inputs": {"x": [NaN, Infinity]}}')
    assert spelled.status_code == 200 and spelled.text == '{"outputs": [NaN, Infinity]}'
    unnamed = _predict(echo, "echo", {"instances": [1, 2]})
    assert unnamed.status_code == 400
    assert "does not declare its inputs" in unnamed.json()["error"]

    raw = serve_host(model_dir=IRIS_DIR, entry_script=SCRIPTS / "azure_raw_echo.py", model_name="raw")
    assert raw.wait_loaded()["status"] == "Healthy"
    v2_tensor = {"name": "x", "shape": [1], "datatype": "INT64", "data": [1]}
    v2 = requests.post(raw.url + "/v2/models/raw/infer", json={"inputs": [v2_tensor]}, timeout=30)
    v1 = _predict(raw, "raw", {"inputs": {"x": [1]}})
    assert (v1.status_code, v1.json()) == (v2.status_code, v2.json())
    assert v1.status_code == 400 and "raw requests" in v1.json()["error"]


def test_codec_without_a_server() -> None:
    specs = [TensorSpec("x", "INT64", (None,))]

    parsed = decode_predict(b'{"instances": [1, 2, 3]}', specs)
    assert parsed.rows == 3 and parsed.inputs["x"].dtype == np.int64
    assert parsed.inputs["x"].tolist() == [1, 2, 3]
    with pytest.raises(BadRequestError, match="out of range for int64"):
        decode_predict(json.dumps({"instances": [2**63]}).encode(), specs)
    with pytest.raises(BadRequestError, match="instances' must be a non-empty array"):
        decode_predict(b'{"instances": 5}', specs)
    with pytest.raises(BadRequestError, match="instances' is empty"):
        decode_predict(b'{"instances": []}', specs)

    outputs = {"y": np.array([b"ab", "c\u00e9".encode()], dtype=object), "n": np.array([1.5, np.nan])}
    rows = json.loads(encode_predictions(PredictRequest({}, rows=2), outputs))
    assert rows["predictions"][0] == {"y": "ab", "n": 1.5}
    assert rows["predictions"][1]["y"] == "c\u00e9" and math.isnan(rows["predictions"][1]["n"])
    columnar = encode_predictions(PredictRequest({}, rows=None), {"y": np.float32(2.0)})
    assert json.loads(columnar) == {"outputs": 2.0}
