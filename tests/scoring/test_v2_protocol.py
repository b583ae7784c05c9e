import numpy as np
import pytest
import requests
import tritonclient.http as triton

from modules.scoring._v2_protocol import decode_request, encode_response

from .conftest import CNN_DIR, IRIS_DIR, SCRIPTS

IRIS_ROWS = np.array([[5.1, 3.5, 1.4, 0.2], [6.3, 3.3, 6.0, 2.5]], dtype=np.float32)


@pytest.fixture
def iris(serve_host):
    host = serve_host(model_dir=IRIS_DIR)
    host.wait_loaded()
    return host


def _client(host) -> triton.InferenceServerClient:
    return triton.InferenceServerClient(url=host.url.removeprefix("http://"))


@pytest.mark.parametrize("binary", [True, False])
def test_tritonclient_infers_against_the_bare_onnx_model(iris, binary):
    client = _client(iris)
    tensor = triton.InferInput("input", list(IRIS_ROWS.shape), "FP32")
    tensor.set_data_from_numpy(IRIS_ROWS, binary_data=binary)
    outputs = [
        triton.InferRequestedOutput("label", binary_data=binary),
        triton.InferRequestedOutput("probabilities", binary_data=binary),
    ]

    result = client.infer("iris", [tensor], outputs=outputs, request_id="req-7")

    assert result.as_numpy("label").tolist() == [0, 2]
    assert result.as_numpy("probabilities").shape == (2, 3)
    assert result.get_response()["id"] == "req-7"


def test_tritonclient_health_and_metadata(iris):
    client = _client(iris)

    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready("iris")
    assert client.get_server_metadata()["name"] == "modelfleet"
    metadata = client.get_model_metadata("iris")
    assert metadata["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 4]}]
    assert {o["name"] for o in metadata["outputs"]} == {"label", "probabilities"}


def test_tritonclient_sees_errors_for_unknown_model_and_wrong_datatype(iris):
    client = _client(iris)
    tensor = triton.InferInput("input", [1, 4], "FP64")
    tensor.set_data_from_numpy(np.zeros((1, 4), dtype=np.float64))

    with pytest.raises(triton.InferenceServerException, match="unknown model 'nope'"):
        client.infer("nope", [tensor])
    with pytest.raises(triton.InferenceServerException, match="model expects FP32"):
        client.infer("iris", [tensor])


def test_plain_http_v2_json_with_nested_data_and_versioned_route(iris):
    body = {
        "inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": [[5.1, 3.5, 1.4, 0.2]]}]
    }
    response = requests.post(iris.url + "/v2/models/iris/versions/1/infer", json=body, timeout=30)

    assert response.status_code == 200
    outputs = {o["name"]: o for o in response.json()["outputs"]}
    assert outputs["label"] == {"name": "label", "datatype": "INT64", "shape": [1], "data": [0]}


@pytest.mark.parametrize(
    ("tensor", "message"),
    [
        (
            {"name": "input", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3]},
            "shape [1, 4] needs 4 elements, got 3",
        ),
        (
            {"name": "input", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]},
            "dimension 1 has size 3, expected 4",
        ),
        (
            {"name": "input", "shape": [1, 4], "datatype": "FP99", "data": [1, 2, 3, 4]},
            "unsupported datatype 'FP99'",
        ),
        (
            {"name": "other", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]},
            "model has no input named 'other'",
        ),
    ],
)
def test_plain_http_v2_bad_tensors_are_400_with_error(iris, tensor, message):
    response = requests.post(iris.url + "/v2/models/iris/infer", json={"inputs": [tensor]}, timeout=30)

    assert response.status_code == 400
    assert message in response.json()["error"]


def test_v2_infer_drives_a_schema_decorated_entry_script(serve_host):
    host = serve_host(model_dir=IRIS_DIR, entry_script=SCRIPTS / "schema_numpy.py")
    host.wait_loaded()
    client = _client(host)
    tensor = triton.InferInput("data", [2, 4], "FP32")
    tensor.set_data_from_numpy(IRIS_ROWS)

    result = client.infer("iris", [tensor])

    assert result.as_numpy("labels").tolist() == [0, 2]
    assert client.get_model_metadata("iris")["inputs"][0]["shape"] == [-1, 4]


def test_cnn_model_answers_over_v2_with_binary_tensors(serve_host):
    host = serve_host(model_dir=CNN_DIR)
    host.wait_loaded()
    client = _client(host)
    images = np.random.default_rng(0).random((3, 1, 28, 28), dtype=np.float32)
    tensor = triton.InferInput("input", list(images.shape), "FP32")
    tensor.set_data_from_numpy(images)

    result = client.infer("cnn", [tensor])

    assert result.as_numpy("probabilities").shape == (3, 10)


@pytest.mark.parametrize(
    ("datatype", "values"),
    [
        ("FP16", np.array([1.5, -2.0], dtype=np.float16)),
        ("INT32", np.array([1, -7], dtype=np.int32)),
        ("INT64", np.array([2**40, 3], dtype=np.int64)),
        ("BOOL", np.array([True, False])),
        ("BYTES", np.array([b"ab", b""], dtype=object)),
    ],
)
def test_codec_round_trips_each_datatype_as_json_and_binary(datatype, values):
    for binary in (False, True):
        request = triton.InferInput("x", [2], datatype)
        request.set_data_from_numpy(values, binary_data=binary)
        body, header_length = triton.InferenceServerClient.generate_request_body(
            [request], outputs=[triton.InferRequestedOutput("x", binary_data=binary)]
        )
        decoded = decode_request(body, None if header_length is None else str(header_length))
        payload, headers = encode_response("m", "1", decoded, {"x": decoded.inputs["x"]})
        length = headers.get("Inference-Header-Content-Length")
        result = triton.InferenceServerClient.parse_response_body(
            payload, header_length=None if length is None else int(length)
        )
        got = result.as_numpy("x").tolist()
        if datatype == "BYTES":  # tritonclient gives str for JSON strings, bytes for binary
            got = [item.encode() if isinstance(item, str) else item for item in got]
        assert got == values.tolist(), (datatype, binary)
