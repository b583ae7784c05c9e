"""KServe's own REST client (`kserve.InferenceRESTClient`) against the host: over the Open Inference
Protocol v2 with an ONNX model with a string input, and over its default V1 protocol with the
CNN example and the same string model.

How: `kserve` pins FastAPI, pydantic, grpcio and more, so it is not installed beside the project.
`_reference_envs.reference_python("kserve", ...)` builds a venv of its own with `kserve==0.21.0`
(once; cached under `.pytest_cache/scoring-venvs/`, required under CI=true), and
`clients/kserve_rest.py` (v2) or `clients/kserve_rest_v1.py` (V1) runs there as a subprocess
against the hosts this test starts on loopback ports, printing what the client saw as JSON.

The point of the error cases: the client reads an error body only when its Content-Type is
exactly `application/json`; with anything else the user sees a status line and no message.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import requests

from ._reference_envs import KSERVE_PACKAGES, reference_python
from .conftest import CNN_DIR
from .test_v2_strictness import _string_model

CLIENT = Path(__file__).resolve().parent / "clients" / "kserve_rest.py"
CLIENT_V1 = Path(__file__).resolve().parent / "clients" / "kserve_rest_v1.py"


@pytest.mark.timeout(1500)  # the first run builds the venv
def test_kserve_rest_client_strings_and_error_messages(serve_host, tmp_path: Path) -> None:
    python = reference_python("kserve", KSERVE_PACKAGES)
    host = serve_host(model_dir=_string_model(tmp_path / "upper"), model_name="upper")
    assert host.wait_loaded()["status"] == "Healthy"

    done = subprocess.run(
        [str(python), str(CLIENT), host.url, "upper"], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)

    assert seen["live"] is True and seen["ready"] is True
    assert seen["model_ready"] is True and seen["unknown_model_ready"] is False
    strings = {"echo": ["héllo", "World", "ß"], "is_hello": [True, False, False]}
    assert seen["json"] == {"status": 200, "outputs": strings}
    assert seen["binary"] == {"status": 200, "outputs": strings}
    # The server's own words reach the user through the client's exception.
    assert seen["not_utf8"]["status"] == 400
    assert seen["not_utf8"]["error"].startswith("input 'text': BYTES elements must be UTF-8 text, '400")
    assert seen["unknown_model"]["status"] == 404
    assert seen["unknown_model"]["error"].startswith("unknown model 'no-such-model'")
    assert seen["wrong_datatype"]["status"] == 400
    assert seen["wrong_datatype"]["error"].startswith("input 'text': datatype mismatch, model expects BYTES")


def _v2_answer(url: str, images: np.ndarray) -> list:
    tensor = {"name": "input", "shape": list(images.shape), "datatype": "FP32", "data": images.tolist()}
    response = requests.post(url + "/v2/models/cnn/infer", json={"inputs": [tensor]}, timeout=30)
    assert response.status_code == 200, response.text
    (output,) = response.json()["outputs"]
    return np.asarray(output["data"], dtype=np.float32).reshape(output["shape"]).tolist()


@pytest.mark.timeout(1500)  # the first run builds the venv
def test_kserve_rest_client_v1_predicts_and_reads_error_messages(serve_host, tmp_path: Path) -> None:
    python = reference_python("kserve", KSERVE_PACKAGES)
    cnn = serve_host(model_dir=CNN_DIR)
    strings = serve_host(model_dir=_string_model(tmp_path / "upper"), model_name="upper")
    assert cnn.wait_loaded()["status"] == "Healthy"
    assert strings.wait_loaded()["status"] == "Healthy"

    done = subprocess.run(
        [str(python), str(CLIENT_V1), cnn.url, strings.url], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)

    # V1's is_server_live wants `{"status": "alive"}` from `GET /`, which is Azure ML's liveness
    # route here (`{"status": "Healthy", ...}`): the call succeeds and answers False, as the
    # docs say. Model readiness is the V1 probe that works.
    assert seen["live"] == {"status": 200, "value": False}
    assert seen["model_ready"] == {"status": 200, "value": True}
    # An unknown model is a 404, which V1's is_model_ready raises with the server's words.
    assert seen["unknown_model_ready"]["status"] == 404
    assert seen["unknown_model_ready"]["error"].startswith("unknown model 'no-such-model'; this host serves")
    # The same images the client sent (see its images()), asked of the v2 route.
    images = (np.arange(2 * 28 * 28, dtype=np.float32) / (2 * 28 * 28)).reshape(2, 1, 28, 28)
    wanted = _v2_answer(cnn.url, images)
    assert seen["cnn_rows"]["status"] == 200
    assert np.asarray(seen["cnn_rows"]["value"]["predictions"], dtype=np.float32).tolist() == wanted
    assert seen["cnn_columns"]["status"] == 200
    assert np.asarray(seen["cnn_columns"]["value"]["outputs"], dtype=np.float32).tolist() == wanted
    assert seen["strings"] == {
        "status": 200,
        "value": {
            "predictions": [
                {"echo": "héllo", "is_hello": True},
                {"echo": "World", "is_hello": False},
                {"echo": "ß", "is_hello": False},
            ]
        },
    }
    # The server's own words reach the user through the client's exception.
    assert seen["wrong_shape"]["status"] == 400
    assert seen["wrong_shape"]["error"].startswith(
        "field 'input': expected 4 dimensions [N, 1, 28, 28], got 2 (shape [1, 2]), '400"
    )
    assert seen["numbers_for_strings"]["status"] == 400
    assert seen["numbers_for_strings"]["error"].startswith(
        "field 'text': expected a rectangular array of strings, '400"
    )
    assert seen["unknown_model"]["status"] == 404
    assert seen["unknown_model"]["error"].startswith("unknown model 'no-such-model'")
