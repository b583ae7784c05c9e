"""Triton's extensions that tritonclient users reach for besides plain inference: the top classes
of an output (`class_count`), the model's configuration (`get_model_config`), and model control,
which a host serving one fixed model refuses in words instead of a bare 404.

The reference for the classification strings is the full output tensor from the same host, ranked
here with numpy: a request that asks for classes must never get the whole tensor with a 200.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import requests
import tritonclient.http as triton
from onnx import TensorProto, helper

from .conftest import CNN_DIR, IRIS_DIR

IRIS_ROWS = np.array([[5.1, 3.5, 1.4, 0.2], [6.3, 3.3, 6.0, 2.5], [5.9, 3.0, 5.1, 1.8]], dtype=np.float32)


def _fixed_shape_model(folder: Path) -> Path:
    """`scores` = `x` (FP32 [5]): no free first dimension, so no batch to Triton."""
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["scores"])],
        "fixed",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [5])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, [5])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    folder.mkdir(parents=True, exist_ok=True)
    onnx.save(model, folder / "fixed.onnx")
    return folder


def _client(host) -> triton.InferenceServerClient:
    return triton.InferenceServerClient(url=host.url.removeprefix("http://"))


def _texts(array: np.ndarray) -> list[list[str]] | list[str]:
    return np.vectorize(lambda item: item.decode() if isinstance(item, bytes) else item, otypes=[object])(
        array
    ).tolist()


def _expected_classes(rows: np.ndarray, count: int) -> list[list[str]]:
    expected = []
    for row in rows:
        order = np.argsort(-row.astype(np.float64), kind="stable")[:count]
        expected.append([f"{float(row[i]):f}:{int(i)}" for i in order])
    return expected


@pytest.fixture
def cnn(serve_host):
    host = serve_host(model_dir=CNN_DIR)
    host.wait_loaded()
    return host


@pytest.mark.parametrize("binary", [True, False])
def test_class_count_answers_the_top_classes_per_batch_entry(cnn, binary):
    client = _client(cnn)
    images = np.random.default_rng(7).random((3, 1, 28, 28), dtype=np.float32)
    tensor = triton.InferInput("input", list(images.shape), "FP32")
    tensor.set_data_from_numpy(images, binary_data=binary)

    full = client.infer("cnn", [tensor]).as_numpy("probabilities")
    top = client.infer(
        "cnn",
        [tensor],
        outputs=[triton.InferRequestedOutput("probabilities", binary_data=binary, class_count=3)],
    )

    output = top.get_output("probabilities")
    assert output["datatype"] == "BYTES"
    assert output["shape"] == [3, 3]
    assert _texts(top.as_numpy("probabilities")) == _expected_classes(full, 3)


def test_class_count_over_the_number_of_classes_gives_them_all_and_integers_stay_integers(serve_host):
    host = serve_host(model_dir=IRIS_DIR)
    host.wait_loaded()
    client = _client(host)
    tensor = triton.InferInput("input", list(IRIS_ROWS.shape), "FP32")
    tensor.set_data_from_numpy(IRIS_ROWS)

    full = client.infer("iris", [tensor])
    top = client.infer(
        "iris",
        [tensor],
        outputs=[
            triton.InferRequestedOutput("probabilities", class_count=10),
            triton.InferRequestedOutput("label", class_count=1),
        ],
    )

    assert top.get_output("probabilities")["shape"] == [3, 3]
    assert _texts(top.as_numpy("probabilities")) == _expected_classes(full.as_numpy("probabilities"), 3)
    labels = full.as_numpy("label").tolist()
    assert _texts(top.as_numpy("label")) == [[f"{label}:0"] for label in labels]


def test_class_count_on_an_output_without_a_batch_ranks_the_whole_tensor(serve_host, tmp_path: Path):
    host = serve_host(model_dir=_fixed_shape_model(tmp_path / "fixed"), model_name="fixed")
    host.wait_loaded()
    client = _client(host)
    values = np.array([0.5, 2.0, -1.0, 2.0, 0.25], dtype=np.float32)
    tensor = triton.InferInput("x", [5], "FP32")
    tensor.set_data_from_numpy(values)

    top = client.infer("fixed", [tensor], outputs=[triton.InferRequestedOutput("scores", class_count=3)])

    assert top.get_output("scores")["shape"] == [3]
    # equal values keep their index order
    assert _texts(top.as_numpy("scores")) == ["2.000000:1", "2.000000:3", "0.500000:0"]


@pytest.mark.parametrize("count", [0, -2, True, "3", 1.5, {"count": 3}])
def test_a_classification_parameter_that_is_no_positive_integer_is_a_400(cnn, count):
    body = {
        "inputs": [{"name": "input", "shape": [1, 1, 28, 28], "datatype": "FP32", "data": [0.0] * 784}],
        "outputs": [{"name": "probabilities", "parameters": {"classification": count}}],
    }

    reply = requests.post(f"{cnn.url}/v2/models/cnn/infer", json=body, timeout=30)

    assert reply.status_code == 400
    assert reply.headers["Content-Type"] == "application/json"
    assert "'classification' must be a positive integer" in reply.json()["error"]


def test_classification_of_a_string_output_is_a_400(serve_host, tmp_path: Path):
    from .test_v2_strictness import _string_model

    host = serve_host(model_dir=_string_model(tmp_path / "strings"), model_name="strings")
    host.wait_loaded()
    body = {
        "inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["héllo"]}],
        "outputs": [{"name": "echo", "parameters": {"classification": 1}}],
    }

    reply = requests.post(f"{host.url}/v2/models/strings/infer", json=body, timeout=30)

    assert reply.status_code == 400
    assert "classification needs numbers" in reply.json()["error"]


def test_model_config_reads_as_triton_writes_it_for_an_onnx_model(cnn, serve_host, tmp_path: Path):
    client = _client(cnn)

    assert {"binary_tensor_data", "classification", "model_configuration"} <= set(
        client.get_server_metadata()["extensions"]
    )
    config = client.get_model_config("cnn")
    assert config["name"] == "cnn"
    assert config["platform"] == "onnxruntime_onnx" and config["backend"] == "onnxruntime"
    # a free first dimension everywhere: a batching model, dims without the batch
    assert config["max_batch_size"] == 4
    assert config["input"] == [
        {"name": "input", "data_type": "TYPE_FP32", "dims": [1, 28, 28], "format": "FORMAT_NONE"}
    ]
    assert config["output"] == [
        {"name": "probabilities", "data_type": "TYPE_FP32", "dims": [10], "label_filename": ""}
    ]
    assert client.get_model_metadata("cnn")["inputs"][0]["shape"] == [-1, 1, 28, 28]

    batching = serve_host(model_dir=CNN_DIR, batching={"max_batch_size": 16, "max_wait_ms": 2})
    batching.wait_loaded()
    config = _client(batching).get_model_config("cnn")
    assert config["max_batch_size"] == 16 and config["dynamic_batching"] == {}

    fixed = serve_host(model_dir=_fixed_shape_model(tmp_path / "fixed"), model_name="fixed")
    fixed.wait_loaded()
    config = _client(fixed).get_model_config("fixed")
    assert config["max_batch_size"] == 0
    assert config["input"][0]["dims"] == [5] and config["output"][0]["dims"] == [5]

    with pytest.raises(triton.InferenceServerException, match="unknown model 'nope'"):
        client.get_model_config("nope")


def test_loading_and_unloading_models_is_refused_in_words(cnn):
    client = _client(cnn)

    for control in (client.load_model, client.unload_model):
        with pytest.raises(triton.InferenceServerException, match="models cannot be loaded or unloaded"):
            control("cnn")
    assert client.is_model_ready("cnn")


def test_statistics_are_refused_with_where_to_find_them(cnn):
    client = _client(cnn)

    for ask in (lambda: client.get_inference_statistics("cnn"), client.get_inference_statistics):
        with pytest.raises(triton.InferenceServerException, match="GET /metrics"):
            ask()
