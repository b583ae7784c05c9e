"""Where the model is: Azure ML v1's AZUREML_MODEL_DIR layout, for every way a host is started.

One model: AZUREML_MODEL_DIR is that model's version folder with its files directly inside.
Several: it is the root, with files at `<name>/<version>/<file>`. Module folders here are laid
out by the same `model_targets` the agent's store and `modules.unpack` use, and the settings
come from the agent's own `InstanceConfig`, so this is the path a deployed module takes.
"""

from __future__ import annotations

import shutil
from datetime import UTC, datetime
from pathlib import Path

import pytest
import requests

from edge_agent._runtime._config import InstanceConfig
from modules.artifact import module_manifest, parse_module_manifest
from modules.model_config import ModelFile
from modules.oci import sha256_bytes
from modules.scoring._azureml_model import Model, ModelNotFoundException, WebserviceException
from modules.spec import ModelRef, ModuleSpec

from .conftest import CNN_DIR, IRIS_DIR, SCRIPTS

IRIS_ROWS = {"data": [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]]}


def _ref(name: str, version: int, source: Path) -> ModelRef:
    data = source.read_bytes()
    files = [ModelFile(path=source.name, digest=sha256_bytes(data), size=len(data))]
    return ModelRef(name=name, version=version, digest=sha256_bytes(name.encode()), files=files)


def _module_folder(root: Path, models: list[tuple[str, int, Path]], entry_script: str | None) -> ModuleSpec:
    """Lay a module's model files out exactly as a device or `serve --module` would."""
    spec = ModuleSpec(
        name="svc",
        version=3,
        entry_script=entry_script,
        models=[_ref(name, version, source) for name, version, source in models],
        created=datetime(2024, 1, 2, tzinfo=UTC),
    )
    config = spec.model_dump_json().encode()
    manifest = parse_module_manifest(module_manifest(spec, config, None), "modules/svc:3")
    sources = {sha256_bytes(source.read_bytes()): source for _, _, source in models}
    for layer, target in manifest.model_targets(root):
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(sources[layer.digest], target)
    return spec


def _deployed_settings(root: Path, spec: ModuleSpec, script: Path | None) -> dict:
    config = InstanceConfig(
        instance_id="svc-3-a", module="svc", model_dir=root / "models", entry_script=script, spec=spec, port=9
    )
    return config.scoring_settings().model_dump()


def test_module_files_land_in_azure_ml_v1_layout(tmp_path: Path) -> None:
    _module_folder(tmp_path, [("iris", 1, IRIS_DIR / "model.onnx"), ("cnn", 2, CNN_DIR / "model.onnx")], None)
    assert (tmp_path / "models" / "iris" / "1" / "model.onnx").is_file()
    assert (tmp_path / "models" / "cnn" / "2" / "model.onnx").is_file()


def test_azure_style_script_answers_through_serve_model_dir(serve_host) -> None:
    host = serve_host(model_dir=IRIS_DIR, entry_script=SCRIPTS / "azure_model_dir.py")
    assert host.wait_loaded()["status"] == "Healthy"
    response = requests.post(host.url + "/score", json=IRIS_ROWS, timeout=30)
    assert response.status_code == 200, response.text
    assert response.json() == [0, 2]


def test_azure_style_script_answers_in_a_deployed_single_model_module(serve_host, tmp_path: Path) -> None:
    spec = _module_folder(tmp_path, [("iris", 4, IRIS_DIR / "model.onnx")], "score.py")
    settings = _deployed_settings(tmp_path, spec, SCRIPTS / "azure_model_dir.py")
    assert settings["model_dir"] == tmp_path / "models" / "iris" / "4"
    host = serve_host(**settings)
    assert host.wait_loaded()["status"] == "Healthy"
    response = requests.post(host.url + "/score", json=IRIS_ROWS, timeout=30)
    assert response.status_code == 200, response.text
    assert response.json() == [0, 2]


def test_get_model_path_finds_the_one_model_of_a_module(serve_host, tmp_path: Path) -> None:
    # Registered under its file name, as Azure ML v1 samples do (`sklearn_regression_model.pkl`).
    spec = _module_folder(tmp_path, [("model.onnx", 2, IRIS_DIR / "model.onnx")], "score.py")
    host = serve_host(**_deployed_settings(tmp_path, spec, SCRIPTS / "azure_get_model_path.py"))
    assert host.wait_loaded()["status"] == "Healthy"
    response = requests.post(host.url + "/score", json=IRIS_ROWS, timeout=30)
    assert response.status_code == 200, response.text
    assert response.json()["labels"] == [0, 2]
    assert Path(response.json()["path"]) == tmp_path / "models" / "model.onnx" / "2" / "model.onnx"


def test_get_model_path_finds_the_file_in_a_flat_model_folder(serve_host) -> None:
    host = serve_host(model_dir=IRIS_DIR, entry_script=SCRIPTS / "azure_get_model_path.py")
    assert host.wait_loaded()["status"] == "Healthy"
    response = requests.post(host.url + "/score", json=IRIS_ROWS, timeout=30)
    assert response.status_code == 200, response.text
    assert Path(response.json()["path"]) == IRIS_DIR.resolve() / "model.onnx"


def test_two_model_module_finds_name_version_file(serve_host, tmp_path: Path) -> None:
    spec = _module_folder(
        tmp_path, [("iris", 1, IRIS_DIR / "model.onnx"), ("cnn", 2, CNN_DIR / "model.onnx")], "score.py"
    )
    settings = _deployed_settings(tmp_path, spec, SCRIPTS / "azure_two_models.py")
    assert settings["model_dir"] == tmp_path / "models"
    host = serve_host(**settings)
    assert host.wait_loaded()["status"] == "Healthy", host.wait_loaded()
    response = requests.post(host.url + "/score", json={"x": 1}, timeout=30)
    assert response.status_code == 200, response.text
    assert response.json() == {
        "iris_joined": "iris/1/model.onnx",
        "iris": "iris/1/model.onnx",
        "cnn_v2": "cnn/2/model.onnx",
        "cnn_latest": "cnn/2/model.onnx",
        "raw": {"x": 1},
    }


def test_get_model_path_follows_azure_ml_v1_rules(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for version in (1, 2, 10):
        (tmp_path / "m" / str(version)).mkdir(parents=True)
        (tmp_path / "m" / str(version) / "weights.bin").write_bytes(b"x")
    (tmp_path / "m" / "10" / "extra.txt").write_bytes(b"y")
    monkeypatch.setenv("MODELFLEET_MODELS_ROOT", str(tmp_path))
    monkeypatch.setenv("AZUREML_MODEL_DIR", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    assert Model.get_model_path("m", version=2) == str(tmp_path / "m" / "2" / "weights.bin")
    with pytest.raises(WebserviceException, match="can contain only 1 file or folder"):
        Model.get_model_path("m")  # latest is 10, numerically, and it holds two entries
    with pytest.raises(WebserviceException, match="version should be an int"):
        Model.get_model_path("m", version="2")
    with pytest.raises(ModelNotFoundException):
        Model.get_model_path("absent")
