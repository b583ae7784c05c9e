import json

import pytest
import requests

from modules._errors import ConfigError
from modules.scoring._zero_code import find_onnx_model

from .conftest import CNN_DIR, IRIS_DIR


def test_bare_model_takes_data_or_the_input_name_and_returns_every_output(serve_host):
    host = serve_host(model_dir=IRIS_DIR)
    by_data = requests.post(host.url + "/score", json={"data": [[5.1, 3.5, 1.4, 0.2]]}, timeout=30)
    by_name = requests.post(host.url + "/score", json={"input": [[5.1, 3.5, 1.4, 0.2]]}, timeout=30)

    assert by_data.status_code == 200
    assert by_data.json()["label"] == [0]
    assert by_name.json() == by_data.json()


def test_cnn_sample_input_scores(serve_host):
    host = serve_host(model_dir=CNN_DIR)
    sample = json.loads((CNN_DIR / "sample-input.json").read_text())
    response = requests.post(host.url + "/score", json=sample, timeout=30)

    assert response.status_code == 200
    assert len(response.json()["probabilities"][0]) == 10


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"rows": [[1, 2, 3, 4]]}, "missing field 'input' (or 'data')"),
        ({"data": [[1, 2, 3]]}, "field 'data': dimension 1 has size 3, expected 4"),
        ({"data": [1, 2, 3, 4]}, "field 'data': expected 2 dimensions [N, 4], got 1"),
        ({"data": [["a", "b", "c", "d"]]}, "expected float32 numbers, got strings"),
        ({"data": [[1, 2], [3]]}, "field 'data': not a rectangular array"),
        ([1, 2], "body must be a JSON object"),
    ],
)
def test_graph_mismatch_is_400_with_a_precise_message(serve_host, body, message):
    host = serve_host(model_dir=IRIS_DIR)
    response = requests.post(host.url + "/score", json=body, timeout=30)

    assert response.status_code == 400
    assert message in response.json()["message"]


def test_swagger_is_derived_from_the_graph(serve_host):
    host = serve_host(model_dir=IRIS_DIR)
    host.wait_loaded()
    document = requests.get(host.url + "/swagger.json", timeout=5).json()

    body = document["definitions"]["ServiceInput"]
    assert body["required"] == ["input"]
    assert body["properties"]["input"]["items"]["items"]["format"] == "float"
    assert set(document["definitions"]["ServiceOutput"]["properties"]) == {"label", "probabilities"}


def test_model_folder_may_be_packaged_or_flat(tmp_path):
    packaged = tmp_path / "packaged" / "iris"
    packaged.mkdir(parents=True)
    (packaged / "model.onnx").write_bytes((IRIS_DIR / "model.onnx").read_bytes())

    assert find_onnx_model(tmp_path / "packaged") == packaged / "model.onnx"
    assert find_onnx_model(IRIS_DIR) == IRIS_DIR / "model.onnx"


def test_no_or_several_onnx_files_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match=r"no \.onnx file"):
        find_onnx_model(tmp_path)
    (tmp_path / "a.onnx").write_bytes(b"x")
    (tmp_path / "b.onnx").write_bytes(b"x")
    with pytest.raises(ConfigError, match=r"several .onnx files .*a.onnx, b.onnx"):
        find_onnx_model(tmp_path)


def _identity_model(folder, element_type):
    """`x` -> `y` unchanged, of one element type, any length."""
    import onnx
    from onnx import helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "identity",
        [helper.make_tensor_value_info("x", element_type, ["N"])],
        [helper.make_tensor_value_info("y", element_type, ["N"])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])
    model.ir_version = 9
    folder.mkdir(parents=True, exist_ok=True)
    onnx.save(model, folder / "identity.onnx")
    return folder


@pytest.mark.parametrize(
    ("element", "values", "message"),
    [
        ("UINT8", [1, 300], "a value is out of range for uint8 (0..255)"),
        ("UINT8", [-1, 2], "a value is out of range for uint8 (0..255)"),
        ("INT32", [2**40], "a value is out of range for int32"),
        ("INT64", [2**70], "a value is out of range for int64"),
        ("FLOAT16", [1.0, 1e10], "a value is out of range for float16 (largest 65504)"),
        ("FLOAT", [1e39], "a value is out of range for float32"),
    ],
)
def test_numbers_a_type_cannot_hold_are_a_400_not_a_wrapped_answer(
    serve_host, tmp_path, element, values, message
):
    from onnx import TensorProto

    host = serve_host(model_dir=_identity_model(tmp_path / "m", getattr(TensorProto, element)))
    host.wait_loaded()

    reply = requests.post(f"{host.url}/score", json={"x": values}, timeout=30)

    assert reply.status_code == 400, reply.text
    assert message in reply.json()["message"]


def test_numbers_at_the_edges_of_a_type_pass_unchanged(serve_host, tmp_path):
    from onnx import TensorProto

    host = serve_host(model_dir=_identity_model(tmp_path / "u8", TensorProto.UINT8))
    host.wait_loaded()
    assert requests.post(f"{host.url}/score", json={"x": [0, 255]}, timeout=30).json() == {"y": [0, 255]}
    half = serve_host(model_dir=_identity_model(tmp_path / "f16", TensorProto.FLOAT16))
    half.wait_loaded()
    assert requests.post(f"{half.url}/score", json={"x": [65504.0, -2.5]}, timeout=30).json() == {
        "y": [65504.0, -2.5]
    }
