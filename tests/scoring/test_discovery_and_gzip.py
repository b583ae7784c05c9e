"""How clients find what a host serves (the zero-code model's name, Triton's repository index) and
gzip for clients that ask for it."""

from __future__ import annotations

import gzip
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
import tritonclient.http as triton

from .conftest import IRIS_DIR, ROOT, SCRIPTS

IRIS_ROW = [5.1, 3.5, 1.4, 0.2]


def _infer_body(rows: int) -> dict:
    return {"inputs": [{"name": "input", "shape": [rows, 4], "datatype": "FP32", "data": IRIS_ROW * rows}]}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_serve_model_dir_names_a_zero_code_model_after_its_file(tmp_path: Path) -> None:
    """`modelfleet serve --model-dir ./models` with `iris-classifier.onnx` inside answers as
    `iris-classifier`, not `models`; the repository index says so."""
    models = tmp_path / "models"
    models.mkdir()
    shutil.copy(IRIS_DIR / "model.onnx", models / "iris-classifier.onnx")
    port = _free_port()
    command = [sys.executable, "-m", "modules.cli", "serve", "--model-dir", str(models), "--port", str(port)]
    process = subprocess.Popen(
        [*command, "--processes", "1", "--provider", "cpu"],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if requests.get(base + "/v2/health/ready", timeout=2).status_code == 200:
                    break
            except requests.RequestException:
                pass
            assert time.monotonic() < deadline and process.poll() is None, "the host never became ready"
            time.sleep(0.2)
        index = triton.InferenceServerClient(url=f"127.0.0.1:{port}").get_model_repository_index()
        assert index == [{"name": "iris-classifier", "version": "1", "state": "READY"}]
        answer = requests.post(base + "/v2/models/iris-classifier/infer", json=_infer_body(1), timeout=10)
        assert answer.status_code == 200, answer.text
        assert requests.get(base + "/v2/models/models", timeout=10).status_code == 404
    finally:
        process.terminate()
        process.wait(30)


def test_a_file_named_model_onnx_takes_its_folders_name(serve_host) -> None:
    host = serve_host(model_dir=IRIS_DIR)
    host.wait_loaded()
    assert requests.get(host.url + "/v2/models/iris/ready", timeout=5).status_code == 200


def test_repository_index_needs_the_key_and_filters_on_ready(serve_host, tmp_path: Path) -> None:
    host = serve_host(model_dir=IRIS_DIR, primary_key="k" * 32, model_version="3")
    host.wait_loaded()
    index = host.url + "/v2/repository/index"
    assert requests.post(index, timeout=5).status_code == 401
    key = {"Authorization": "Bearer " + "k" * 32}
    ready = [{"name": "iris", "version": "3", "state": "READY"}]
    assert requests.post(index, headers=key, timeout=5).json() == ready
    assert requests.post(index, json={"ready": True}, headers=key, timeout=5).json() == ready
    refused = requests.post(index, json={"ready": "yes"}, headers=key, timeout=5)
    assert refused.status_code == 400
    assert refused.headers["Content-Type"] == "application/json"

    broken = serve_host(model_dir=IRIS_DIR, entry_script=SCRIPTS / "failing_init.py", model_name="broken")
    assert broken.wait_loaded()["status"] == "Unhealthy"
    everything = requests.post(broken.url + "/v2/repository/index", timeout=5).json()
    assert [(e["name"], e["state"]) for e in everything] == [("broken", "UNAVAILABLE")]
    assert everything[0]["reason"]
    assert requests.post(broken.url + "/v2/repository/index", json={"ready": True}, timeout=5).json() == []


@pytest.mark.parametrize("path", ["/score", "/v2/models/iris/infer"])
def test_large_json_answers_are_gzipped_for_clients_that_ask(serve_host, path: str) -> None:
    host = serve_host(model_dir=IRIS_DIR)
    host.wait_loaded()
    body = _infer_body(200) if path.startswith("/v2") else {"data": [IRIS_ROW] * 200}

    asked = requests.post(
        host.url + path, json=body, headers={"Accept-Encoding": "gzip"}, stream=True, timeout=10
    )
    raw = asked.raw.read(decode_content=False)
    assert asked.status_code == 200
    assert asked.headers["Content-Encoding"] == "gzip"
    assert asked.headers["Vary"] == "Accept-Encoding"
    plain = requests.post(host.url + path, json=body, headers={"Accept-Encoding": "identity"}, timeout=10)
    assert "Content-Encoding" not in plain.headers
    assert gzip.decompress(raw) == plain.content
    assert len(raw) < len(plain.content) / 3


def test_small_answers_and_streams_are_not_gzipped(serve_host) -> None:
    host = serve_host(model_dir=IRIS_DIR)
    host.wait_loaded()
    small = requests.post(
        host.url + "/score", json={"data": [IRIS_ROW]}, headers={"Accept-Encoding": "gzip"}, timeout=10
    )
    assert small.status_code == 200 and "Content-Encoding" not in small.headers

    raw = serve_host(model_dir=IRIS_DIR, entry_script=SCRIPTS / "raw_flask.py")
    raw.wait_loaded()
    streamed = requests.get(
        raw.url + "/score?action=stream", headers={"Accept-Encoding": "gzip"}, stream=True, timeout=10
    )
    assert "Content-Encoding" not in streamed.headers
    assert streamed.raw.read(decode_content=False) == b"line 0\nline 1\nline 2\n"


def test_gzip_can_be_turned_off(serve_host) -> None:
    host = serve_host(model_dir=IRIS_DIR, gzip_min_bytes=None)
    host.wait_loaded()
    answer = requests.post(
        host.url + "/score", json={"data": [IRIS_ROW] * 200}, headers={"Accept-Encoding": "gzip"}, timeout=10
    )
    assert answer.status_code == 200 and "Content-Encoding" not in answer.headers
