"""`modelfleet serve --module`: a published module answers on this machine, like on a device."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import requests

from publisher import Model, Module, Workspace
from tests._services import Service, free_port

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"


def _wait_ready(url: str, proc: subprocess.Popen[str], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"serve exited early: {proc.stderr.read() if proc.stderr else ''}")
        try:
            if requests.get(url, timeout=1).status_code == 200:
                return
        except requests.ConnectionError:
            pass
        time.sleep(0.1)
    proc.terminate()
    raise AssertionError(f"scoring host never became ready: {proc.communicate(timeout=10)[1][-2000:]}")


@contextlib.contextmanager
def _serving(module: Module, registry: Service, tmp_path: Path) -> Iterator[str]:
    """`modelfleet serve --module` in one process, pulling into a cache of the test's own; yields
    its base URL once ready, and checks it stops cleanly on SIGINT."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELFLEET_")}
    env |= {"MODELFLEET_REGISTRY": registry.url, "XDG_CACHE_HOME": str(tmp_path / "cache")}
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "modules.cli", "serve", "--module", module.name, "--port", str(port),
         "--processes", "1"],
        env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        base = f"http://127.0.0.1:{port}"
        _wait_ready(f"{base}/v2/health/ready", proc)
        yield base
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=20) == 0


def test_serve_module_pulls_and_answers_with_the_packaged_entry_script(
    distribution: Service, tmp_path: Path
) -> None:
    ws = Workspace.create(tmp_path / "ws", registry=distribution.url)
    name = f"iris-{os.urandom(3).hex()}"
    Model.register(ws, EXAMPLES / "models" / "iris" / "model.onnx", name)
    module = Module.package(ws, name + "-svc", [name], entry_script=EXAMPLES / "iris-service" / "score.py")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELFLEET_")}
    env |= {"MODELFLEET_REGISTRY": distribution.url, "XDG_CACHE_HOME": str(tmp_path / "cache")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "modules.cli", "serve", "--module", module.name, "--port", str(port)],
        env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        base = f"http://127.0.0.1:{port}"
        _wait_ready(f"{base}/v2/health/ready", proc)
        sample = json.loads((EXAMPLES / "models" / "iris" / "sample-input.json").read_text())
        resp = requests.post(
            f"{base}/score", json.dumps(sample), headers={"Content-Type": "application/json"}
        )
        assert resp.status_code == 200, resp.text
        assert resp.json()["predictions"] == ["setosa", "versicolor", "virginica"]
        pulled = list((tmp_path / "cache" / "modelfleet" / "modules" / module.name).iterdir())
        assert [p.name for p in pulled] == [module.digest.split(":")[1][:16]]
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=20) == 0


def test_serve_unknown_module_is_a_one_line_error(distribution: Service, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELFLEET_")}
    env["MODELFLEET_REGISTRY"] = distribution.url
    proc = subprocess.run(
        [sys.executable, "-m", "modules.cli", "serve", "--module", "never-packaged"],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 1
    assert proc.stderr.strip() == "modelfleet: error: module 'never-packaged' is not registered"


def test_serve_module_gives_azure_style_scripts_the_model_where_azure_ml_v1_puts_it(
    distribution: Service, tmp_path: Path
) -> None:
    """`os.path.join(AZUREML_MODEL_DIR, "model.onnx")` and a zero-code model named as registered."""
    ws = Workspace.create(tmp_path / "ws", registry=distribution.url)
    name = f"iris-{os.urandom(3).hex()}"
    Model.register(ws, EXAMPLES / "models" / "iris" / "model.onnx", name)
    script = ROOT / "tests" / "scoring" / "scripts" / "azure_model_dir.py"
    scripted = Module.package(ws, name + "-svc", [name], entry_script=script)
    bare = Module.package(ws, name + "-bare", [name])
    for module in (scripted, bare):
        with _serving(module, distribution, tmp_path) as base:
            rows = {"data": [[5.1, 3.5, 1.4, 0.2]]}
            if module is scripted:
                resp = requests.post(f"{base}/score", json=rows, timeout=30)
                assert resp.status_code == 200, resp.text
                assert resp.json() == [0]
            else:
                tensor = {"name": "input", "shape": [1, 4], "datatype": "FP32", "data": rows["data"][0]}
                resp = requests.post(f"{base}/v2/models/{name}/infer", json={"inputs": [tensor]}, timeout=30)
                assert resp.status_code == 200, resp.text


def test_a_model_registered_from_a_folder_keeps_the_folder_name_as_azure_ml_does(
    distribution: Service, tmp_path: Path
) -> None:
    """Registered from `./model/`, the file is `AZUREML_MODEL_DIR/model/model.onnx`: what Azure ML's
    online-endpoint samples join (`"model/sklearn_regression_model.pkl"`)."""
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "model.onnx").write_bytes((EXAMPLES / "models" / "iris" / "model.onnx").read_bytes())
    ws = Workspace.create(tmp_path / "ws", registry=distribution.url)
    name = f"iris-{os.urandom(3).hex()}"
    model = Model.register(ws, folder, name)
    assert [f.path for f in model.files] == ["model/model.onnx"]
    script = ROOT / "tests" / "scoring" / "scripts" / "azure_model_folder.py"
    module = Module.package(ws, name + "-svc", [name], entry_script=script)
    with _serving(module, distribution, tmp_path) as base:
        resp = requests.post(f"{base}/score", json={"data": [[5.1, 3.5, 1.4, 0.2]]}, timeout=30)
        assert resp.status_code == 200, resp.text
        assert resp.json() == [0]
