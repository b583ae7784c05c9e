"""Open Inference Protocol strictness: no wrong answer with a 200, no 500 for a bad request.

String tensors go through a real ONNX model with a string input (built here with the onnx
helper API) and a real Triton client, in JSON and with the binary tensor extension.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import requests
import tritonclient.http as triton
from onnx import TensorProto, helper

from .conftest import IRIS_DIR, SCRIPTS

WORDS = np.array(["héllo".encode(), b"World", "ß".encode()], dtype=object)


def _string_model(folder: Path) -> Path:
    """`text` (strings) -> `echo` (the same strings) and `is_hello` (text == "héllo").

    The comparison is inside the graph, so a model that was handed `"b'h\\xc3\\xa9llo'"`
    answers False where it should answer True.
    """
    hello = helper.make_tensor("hello", TensorProto.STRING, [1], ["héllo".encode()])
    graph = helper.make_graph(
        [
            helper.make_node("Identity", ["text"], ["echo"]),
            helper.make_node("Equal", ["text", "hello"], ["is_hello"]),
        ],
        "strings",
        [helper.make_tensor_value_info("text", TensorProto.STRING, ["N"])],
        [
            helper.make_tensor_value_info("echo", TensorProto.STRING, ["N"]),
            helper.make_tensor_value_info("is_hello", TensorProto.BOOL, ["N"]),
        ],
        initializer=[hello],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    folder.mkdir(parents=True, exist_ok=True)
    onnx.save(model, folder / "strings.onnx")
    return folder


def _texts(array: np.ndarray) -> list[str]:
    return [item.decode() if isinstance(item, bytes) else item for item in array]


@pytest.fixture
def upper(serve_host, tmp_path: Path):
    host = serve_host(model_dir=_string_model(tmp_path / "upper"), model_name="upper")
    assert host.wait_loaded()["status"] == "Healthy"
    return host


def _client(host) -> triton.InferenceServerClient:
    return triton.InferenceServerClient(url=host.url.removeprefix("http://"))


@pytest.mark.parametrize("binary", [True, False])
def test_tritonclient_strings_reach_an_onnx_string_input_as_text(upper, binary: bool) -> None:
    tensor = triton.InferInput("text", [3], "BYTES")
    tensor.set_data_from_numpy(WORDS, binary_data=binary)
    wanted = [
        triton.InferRequestedOutput("echo", binary_data=binary),
        triton.InferRequestedOutput("is_hello", binary_data=binary),
    ]

    result = _client(upper).infer("upper", [tensor], outputs=wanted)

    assert _texts(result.as_numpy("echo")) == ["héllo", "World", "ß"]
    assert result.as_numpy("is_hello").tolist() == [True, False, False]


def test_strings_that_are_not_utf8_are_refused_not_mangled(upper) -> None:
    tensor = triton.InferInput("text", [1], "BYTES")
    tensor.set_data_from_numpy(np.array([b"\xff\xfe"], dtype=object), binary_data=True)
    with pytest.raises(triton.InferenceServerException, match="UTF-8"):
        _client(upper).infer("upper", [tensor])


@pytest.mark.parametrize("binary", [True, False])
def test_binary_strings_reach_an_entry_script_as_json_text(serve_host, binary: bool) -> None:
    host = serve_host(model_dir=IRIS_DIR, entry_script=SCRIPTS / "echo_json.py", model_name="echo")
    assert host.wait_loaded()["status"] == "Healthy"
    tensor = triton.InferInput("text", [3], "BYTES")
    tensor.set_data_from_numpy(WORDS, binary_data=binary)

    result = _client(host).infer("echo", [tensor], outputs=[triton.InferRequestedOutput("text", binary)])

    assert _texts(result.as_numpy("text")) == ["héllo", "World", "ß"]


def _infer(host, document: object, headers: dict[str, str] | None = None, data: bytes | None = None):
    body = data if data is not None else json.dumps(document).encode()
    return requests.post(host.url + "/v2/models/iris/infer", data=body, headers=headers or {}, timeout=30)


GOOD = {"name": "input", "shape": [1, 4], "datatype": "FP32", "data": [5.1, 3.5, 1.4, 0.2]}
MALFORMED = {
    "binary_data_size not an integer": {
        "inputs": [{**GOOD, "data": None, "parameters": {"binary_data_size": "16"}}]
    },
    "binary_data_size negative": {"inputs": [{**GOOD, "parameters": {"binary_data_size": -4}}]},
    "shape with a boolean": {"inputs": [{**GOOD, "shape": [True, 4]}]},
    "input name not a string": {"inputs": [{**GOOD, "name": 7}]},
    "datatype not a string": {"inputs": [{**GOOD, "datatype": ["FP32"]}]},
    "parameters not an object": {"inputs": [GOOD], "parameters": [1]},
    "input parameters not an object": {"inputs": [{**GOOD, "parameters": "x"}]},
    "binary_data_output not a boolean": {"inputs": [GOOD], "parameters": {"binary_data_output": "yes"}},
    "outputs not a list": {"inputs": [GOOD], "outputs": {"name": "label"}},
    "id not a string": {"inputs": [GOOD], "id": {"a": 1}},
    "duplicate input names": {"inputs": [GOOD, GOOD]},
    "ragged data": {"inputs": [{**GOOD, "data": [[1, 2], [3]]}]},
    "UINT8 out of range": {"inputs": [{"name": "input", "shape": [1], "datatype": "UINT8", "data": [300]}]},
    "INT8 below range": {"inputs": [{"name": "input", "shape": [1], "datatype": "INT8", "data": [-129]}]},
    "INT64 beyond 64 bits": {
        "inputs": [{"name": "input", "shape": [1], "datatype": "INT64", "data": [2**70]}]
    },
    "BYTES data not strings": {"inputs": [{"name": "input", "shape": [1], "datatype": "BYTES", "data": [1]}]},
    "deeply nested": None,
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_v2_requests_are_4xx_json_errors(serve_host, case: str) -> None:
    host = serve_host(model_dir=IRIS_DIR)
    host.wait_loaded()
    if case == "deeply nested":
        response = _infer(host, None, data=b'{"inputs": ' + b"[" * 100_000 + b"]" * 100_000 + b"}")
    else:
        response = _infer(host, MALFORMED[case])
    assert 400 <= response.status_code < 500, (response.status_code, response.text)
    assert response.headers["Content-Type"] == "application/json"
    assert isinstance(response.json()["error"], str)


def test_out_of_range_integers_are_refused_not_wrapped() -> None:
    from modules.scoring._errors import BadRequestError
    from modules.scoring._v2_protocol import decode_request

    body = {"inputs": [{"name": "x", "shape": [2], "datatype": "UINT8", "data": [255, 300]}]}
    with pytest.raises(BadRequestError, match="out of range for UINT8"):
        decode_request(json.dumps(body).encode(), None)
    body["inputs"][0]["data"] = [0, 255]
    assert decode_request(json.dumps(body).encode(), None).inputs["x"].tolist() == [0, 255]


@pytest.mark.parametrize(
    ("datatype", "data", "allowed"),
    [("FP16", [1e10], [65504.0, -2.5]), ("FP32", [1e39], [3.0e38]), ("FP16", [70000], [65504])],
)
def test_floats_a_datatype_cannot_hold_are_refused_not_made_infinite(datatype, data, allowed) -> None:
    from modules.scoring._errors import BadRequestError
    from modules.scoring._v2_protocol import decode_request

    body = {"inputs": [{"name": "x", "shape": [len(data)], "datatype": datatype, "data": data}]}
    with pytest.raises(BadRequestError, match=f"out of range for {datatype}"):
        decode_request(json.dumps(body).encode(), None)
    body["inputs"][0].update(shape=[len(allowed)], data=allowed)
    decoded = decode_request(json.dumps(body).encode(), None).inputs["x"]
    assert decoded.tolist() == pytest.approx(allowed, rel=1e-6)
    # NaN and infinities sent as such stay what they are
    body["inputs"][0].update(shape=[1], data=[float("inf")])
    assert decode_request(json.dumps(body).encode(), None).inputs["x"].tolist() == [float("inf")]


def test_empty_outputs_list_returns_every_output(serve_host) -> None:
    host = serve_host(model_dir=IRIS_DIR)
    host.wait_loaded()
    response = _infer(host, {"inputs": [GOOD], "outputs": []})
    assert response.status_code == 200, response.text
    assert {output["name"] for output in response.json()["outputs"]} == {"label", "probabilities"}


def test_a_large_request_is_parsed_off_the_event_loop_and_a_small_one_on_it(serve_host, monkeypatch) -> None:
    import threading

    from modules.scoring import _app

    threads: list[str] = []
    real = _app.decode_request

    def recording(*args):
        threads.append(threading.current_thread().name)
        return real(*args)

    monkeypatch.setattr(_app, "decode_request", recording)
    host = serve_host(model_dir=IRIS_DIR)
    host.wait_loaded()
    rows = 20_000  # about 0.5 MB of JSON
    small = {"inputs": [GOOD]}
    large = {
        "inputs": [
            {"name": "input", "shape": [rows, 4], "datatype": "FP32", "data": [5.1, 3.5, 1.4, 0.2] * rows}
        ]
    }

    assert _infer(host, small).status_code == 200
    assert _infer(host, large).status_code == 200
    loop_thread = host._thread.name

    assert threads[0] == loop_thread
    assert threads[1] != loop_thread
