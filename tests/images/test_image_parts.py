"""The parts of a module image that need no engine and no registry: layers, settings, wheels."""

from __future__ import annotations

import gzip
import io
import json
import tarfile
import zipfile
from pathlib import Path

import pytest

from modules.image import (
    DEFAULT_PORT,
    ImageCache,
    LayerWriter,
    parse_image_reference,
    requirements_layer,
    runtime_distributions,
    unmet_requirements,
)
from modules.image.entrypoint import settings_from_environment


def _write(writer: LayerWriter, dest: Path) -> tuple[str, str, bytes]:
    layer = writer.write(dest, "test")
    return layer.digest, layer.diff_id, dest.read_bytes()


def test_layers_are_byte_identical_for_the_same_files_whatever_their_times_and_order(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    for folder, order in ((a, ["z.py", "a.py"]), (b, ["a.py", "z.py"])):
        folder.mkdir()
        for name in order:
            (folder / name).write_text(f"# {name}\n")
    (b / "a.py").touch()
    first, second = LayerWriter(), LayerWriter()
    first.add_tree(a, "app")
    second.add_tree(b, "app")
    one = _write(first, tmp_path / "one.tar.gz")
    two = _write(second, tmp_path / "two.tar.gz")
    assert one == two
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(one[2]))) as tar:
        members = tar.getmembers()
    assert [m.name for m in members] == ["app", "app/a.py", "app/z.py"]
    assert {(m.mtime, m.uid, m.gid, m.uname, m.gname) for m in members} == {(0, 0, 0, "", "")}
    assert one[2][4:8] == b"\0\0\0\0"  # no time in the gzip header


def test_entrypoint_takes_port_host_and_keys_from_the_environment() -> None:
    baked = json.dumps({"model_dir": "/var/azureml-app/azureml-models/iris/1", "processes": 1})
    settings = settings_from_environment({"MODELFLEET_SCORING_SETTINGS": baked})
    assert (settings.host, settings.port, settings.auth_enabled) == ("0.0.0.0", DEFAULT_PORT, False)
    settings = settings_from_environment(
        {
            "MODELFLEET_SCORING_SETTINGS": baked,
            "MODELFLEET_PORT": "9123",
            "MODELFLEET_HOST": "127.0.0.1",
            "MODELFLEET_MODULE_VERSION": "7",
            "MODELFLEET_SCORING_PRIMARY_KEY": "k1",
        }
    )
    assert (settings.host, settings.port, settings.model_version, settings.auth_enabled) == (
        "127.0.0.1",
        9123,
        "7",
        True,
    )
    with pytest.raises(ValueError, match="MODELFLEET_PORT='http' is not a port number"):
        settings_from_environment({"MODELFLEET_SCORING_SETTINGS": baked, "MODELFLEET_PORT": "http"})
    with pytest.raises(ValueError, match="MODELFLEET_SCORING_SETTINGS is not set"):
        settings_from_environment({})


def test_the_runtime_holds_the_scoring_hosts_packages() -> None:
    names = set(runtime_distributions().distributions)
    assert {"numpy", "aiohttp", "pydantic", "orjson"} <= names
    assert names & {"onnxruntime", "onnxruntime-gpu"}
    assert not names & {"pytest", "amqtt", "paho-mqtt", "onnx"}  # test and agent-side packages stay out


def _tiny_wheel(folder: Path) -> Path:
    wheel = folder / "mfdemo-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr("mfdemo/__init__.py", "VALUE = 42\n")
        z.writestr("mfdemo-1.0.dist-info/METADATA", "Metadata-Version: 2.1\nName: mfdemo\nVersion: 1.0\n")
        z.writestr(
            "mfdemo-1.0.dist-info/WHEEL", "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
        )
        z.writestr("mfdemo-1.0.dist-info/RECORD", "")
    return wheel


def test_requirements_the_runtime_lacks_become_one_layer_of_unpacked_wheels(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    runtime = runtime_distributions().versions()
    assert unmet_requirements(["numpy", "onnxruntime>=1.0"], runtime) == []
    assert requirements_layer(["numpy"], runtime, ImageCache(tmp_path / "cache")) is None

    wheels = tmp_path / "wheels"
    wheels.mkdir()
    _tiny_wheel(wheels)
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(wheels))
    layer = requirements_layer(["numpy", "mfdemo==1.0"], runtime, ImageCache(tmp_path / "cache"))
    assert layer is not None
    with tarfile.open(layer.path) as tar:
        names = tar.getnames()
    assert "opt/modelfleet/requirements/mfdemo/__init__.py" in names
    assert not [n for n in names if "numpy" in n]
    again = requirements_layer(["numpy", "mfdemo==1.0"], runtime, ImageCache(tmp_path / "cache2"))
    assert again is not None and again.digest == layer.digest


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("bases/modelfleet-python:latest", (None, "bases/modelfleet-python", "latest", None)),
        ("127.0.0.1:5000/images/iris:3", ("127.0.0.1:5000", "images/iris", "3", None)),
        (
            "registry.example/team/py@sha256:" + "a" * 64,
            ("registry.example", "team/py", None, "sha256:" + "a" * 64),
        ),
        ("localhost/python", ("localhost", "python", None, None)),
    ],
)
def test_image_references_parse_as_docker_reads_them(text: str, expected: tuple[object, ...]) -> None:
    ref = parse_image_reference(text)
    assert (ref.registry, ref.repository, ref.tag, ref.digest) == expected
