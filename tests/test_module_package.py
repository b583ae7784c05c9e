"""`modelfleet module package`: layers, re-use of model bytes, environments, zero-code rules."""

from __future__ import annotations

import gzip
import io
import json
import os
import shutil
import tarfile
from pathlib import Path

import pytest

from modules import InvalidPackageError, NotFoundError
from modules.oci import RegistryClient
from modules.oci import media_types as mt
from publisher import Model, Module, Workspace
from tests._proxy import FaultProxy
from tests._services import Service

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
IRIS_DIR = EXAMPLES / "models" / "iris"
SCORE = EXAMPLES / "iris-service" / "score.py"


def _name(prefix: str) -> str:
    return f"{prefix}-{os.urandom(3).hex()}"


def _big_model(folder: Path, megabytes: int = 4) -> Path:
    folder.mkdir(parents=True)
    shutil.copy(IRIS_DIR / "model.onnx", folder / "model.onnx")
    (folder / "weights.bin").write_bytes(os.urandom(megabytes << 20))
    return folder


async def test_packaging_a_registered_model_uploads_no_model_bytes(registry: Service, tmp_path: Path) -> None:
    """Bytes counted on the wire by a proxy, not by the client's own bookkeeping."""
    model_dir = _big_model(tmp_path / "model")
    model_bytes = sum(p.stat().st_size for p in model_dir.iterdir())
    proxy = FaultProxy(registry.url)
    await proxy.start()
    try:
        ws = Workspace.create(tmp_path / "ws", registry=proxy.url)
        name = _name("big")
        await Model.register_async(ws, model_dir, name)
        assert proxy.log.request_body_bytes >= model_bytes  # the registration did send them

        before = proxy.log.request_body_bytes
        first = await Module.package_async(ws, _name("svc"), [name], entry_script=SCORE)
        sent_first = proxy.log.request_body_bytes - before
        assert sent_first < 64 * 1024, sent_first

        (tmp_path / "v2").mkdir()
        (tmp_path / "v2" / "score.py").write_text(SCORE.read_text() + "\n# v2\n")
        before = proxy.log.request_body_bytes
        second = await Module.package_async(ws, first.name, [name], entry_script=tmp_path / "v2" / "score.py")
        assert proxy.log.request_body_bytes - before < 64 * 1024
        assert second.version == 2
        assert second.stats is not None and second.stats.blobs_uploaded == 2  # new code layer + config
    finally:
        await proxy.stop()


async def test_module_manifest_has_one_layer_per_model_file_and_a_code_layer(
    registry: Service, tmp_path: Path
) -> None:
    ws = Workspace.create(tmp_path, registry=registry.url)
    model = await Model.register_async(ws, IRIS_DIR, _name("iris"))
    module = await Module.package_async(
        ws,
        _name("svc"),
        [f"{model.name}:1"],
        entry_script="score.py",
        source_dir=EXAMPLES / "iris-service",
        requirements=EXAMPLES / "iris-service" / "requirements.txt",
        sample_input=IRIS_DIR / "sample-input.json",
        providers=["cuda", "cpu"],
    )
    async with RegistryClient(registry.url) as client:
        manifest = (await client.get_manifest(module.repository, "1")).json()
        config = json.loads(await client.get_blob(module.repository, manifest["config"]["digest"]))
        code_layer = manifest["layers"][-1]
        code = await client.get_blob(module.repository, code_layer["digest"])
    assert manifest["config"]["mediaType"] == mt.MODULE_CONFIG
    titles = [layer["annotations"][mt.TITLE] for layer in manifest["layers"]]
    # a registered folder keeps its name inside the model, as in Azure ML
    assert titles == [f"{model.name}/iris/model.onnx", f"{model.name}/iris/sample-input.json", "code.tar.gz"]
    assert code_layer["mediaType"] == mt.MODULE_CODE
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(code))) as tar:
        assert sorted(tar.getnames()) == ["requirements.txt", "score.py"]
        assert all(m.mtime == 0 and m.uid == 0 for m in tar.getmembers())
    assert config["entry_script"] == "score.py"
    assert config["requirements"] == ["numpy"]
    assert config["execution_providers"] == ["cuda", "cpu"]
    assert config["sample_input"]["data"][0] == [5.1, 3.5, 1.4, 0.2]
    assert config["models"][0]["digest"] == model.digest
    shown = await Module.get_async(ws, module.name)
    assert shown.digest == module.digest and shown.spec == module.spec


async def test_same_source_gives_the_same_code_layer(distribution: Service, tmp_path: Path) -> None:
    ws = Workspace.create(tmp_path, registry=distribution.url)
    model = await Model.register_async(ws, IRIS_DIR / "model.onnx", _name("iris"))
    a = await Module.package_async(ws, _name("svc"), [model], entry_script=SCORE)
    b = await Module.package_async(ws, a.name, [model], entry_script=SCORE)
    assert b.stats is not None and b.stats.blobs_uploaded == 1  # only the config (new version, new time)


async def test_zero_code_module_needs_exactly_one_onnx_file(distribution: Service, tmp_path: Path) -> None:
    ws = Workspace.create(tmp_path, registry=distribution.url)
    onnx_model = await Model.register_async(ws, IRIS_DIR / "model.onnx", _name("iris"))
    module = await Module.package_async(ws, _name("zero"), [onnx_model.name])
    assert module.spec.entry_script is None
    (tmp_path / "labels.txt").write_text("a\n")
    plain = await Model.register_async(ws, tmp_path / "labels.txt", _name("labels"))
    with pytest.raises(InvalidPackageError, match=r"exactly one \.onnx file; its models have 0"):
        await Module.package_async(ws, _name("zero"), [plain.name])
    with pytest.raises(InvalidPackageError, match=r"exactly one \.onnx file; its models have 2"):
        second = await Model.register_async(ws, IRIS_DIR / "model.onnx", _name("iris"))
        await Module.package_async(ws, _name("zero"), [onnx_model.name, second.name])


async def test_conda_file_contributes_its_pip_section(distribution: Service, tmp_path: Path) -> None:
    ws = Workspace.create(tmp_path, registry=distribution.url)
    model = await Model.register_async(ws, IRIS_DIR / "model.onnx", _name("iris"))
    conda = tmp_path / "env.yml"
    conda.write_text(
        "name: scoring\nchannels: [conda-forge]\ndependencies:\n  - python=3.11\n  - pip\n"
        "  - pip:\n    - numpy>=1.24\n    - onnxruntime\n"
    )
    module = await Module.package_async(ws, _name("svc"), [model], entry_script=SCORE, conda_file=conda)
    assert module.spec.requirements == ["numpy>=1.24", "onnxruntime"]


async def test_conda_only_dependencies_are_a_clear_error(distribution: Service, tmp_path: Path) -> None:
    ws = Workspace.create(tmp_path, registry=distribution.url)
    conda = tmp_path / "env.yml"
    conda.write_text("dependencies:\n  - python=3.11\n  - scikit-learn=1.3\n  - pip:\n    - numpy\n")
    with pytest.raises(InvalidPackageError, match=r"conda-only dependencies .*scikit-learn=1.3"):
        await Module.package_async(ws, _name("svc"), ["iris"], entry_script=SCORE, conda_file=conda)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"entry_script": "missing.py"}, "does not exist"),
        ({"entry_script": "score.py", "source_dir": "/nonexistent-dir"}, "does not exist"),
        ({"source_dir": "."}, "needs --entry-script"),
        ({"entry_script": SCORE, "sample_input": __file__}, "not valid JSON"),
    ],
)
async def test_bad_package_inputs_are_refused_before_any_upload(
    distribution: Service, tmp_path: Path, kwargs: dict, message: str
) -> None:
    ws = Workspace.create(tmp_path, registry=distribution.url)
    with pytest.raises(InvalidPackageError, match=message):
        await Module.package_async(ws, _name("svc"), ["iris"], **kwargs)


async def test_unknown_model_is_not_found(distribution: Service, tmp_path: Path) -> None:
    ws = Workspace.create(tmp_path, registry=distribution.url)
    with pytest.raises(NotFoundError, match="is not registered"):
        await Module.package_async(ws, _name("svc"), [_name("nope")], entry_script=SCORE)


async def test_entry_script_outside_source_dir_is_refused(distribution: Service, tmp_path: Path) -> None:
    ws = Workspace.create(tmp_path, registry=distribution.url)
    (tmp_path / "src").mkdir()
    with pytest.raises(InvalidPackageError, match="not inside the source folder"):
        await Module.package_async(
            ws, _name("svc"), ["iris"], entry_script=SCORE, source_dir=tmp_path / "src"
        )


async def test_pulled_module_lays_out_models_and_code_as_the_scoring_host_expects(
    registry: Service, tmp_path: Path
) -> None:
    from modules.unpack import pull_module

    ws = Workspace.create(tmp_path / "ws", registry=registry.url)
    model = await Model.register_async(ws, IRIS_DIR, _name("iris"))
    module = await Module.package_async(
        ws, _name("svc"), [model], entry_script="score.py", source_dir=EXAMPLES / "iris-service"
    )
    async with RegistryClient(registry.url) as client:
        unpacked = await pull_module(client, module.repository, module.digest, tmp_path / "m")
        again = await pull_module(client, module.repository, "1", tmp_path / "m")
        assert client.stats.bytes_downloaded < 2 * (IRIS_DIR / "model.onnx").stat().st_size + 10_000
    assert unpacked.digest == again.digest == module.digest
    assert (unpacked.model_dir / model.name / str(model.version) / "iris" / "model.onnx").read_bytes() == (
        IRIS_DIR / "model.onnx"
    ).read_bytes()
    assert unpacked.entry_script == tmp_path / "m" / "code" / "score.py"
    assert unpacked.entry_script.read_text() == SCORE.read_text()
    assert (unpacked.code_dir / "requirements.txt").exists()
