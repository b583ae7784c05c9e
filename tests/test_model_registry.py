"""`modelfleet model ...` against Distribution and the embedded registry, as a user types it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from publisher import Model, Workspace
from publisher.cli import main
from tests._services import Service, free_port
from tests.conftest import REGISTRY_USER

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "models"
IRIS = EXAMPLES / "iris" / "model.onnx"


@pytest.fixture
def cli(
    registry: Service, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
):
    """Run the CLI in-process in an empty folder, pointed at the registry by environment only."""
    for key in list(os.environ):
        if key.startswith("MODELFLEET_"):
            monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MODELFLEET_REGISTRY", registry.url)

    def run(*argv: str) -> tuple[int, str, str]:
        code = main(list(argv))
        out, err = capsys.readouterr()
        return code, out, err

    run.registry = registry  # type: ignore[attr-defined]
    return run


def _unique(name: str) -> str:
    return f"{name}-{os.urandom(3).hex()}"


def test_register_same_model_twice_gives_versions_1_and_2(cli) -> None:
    name = _unique("iris")
    code, out, _ = cli("model", "register", "-n", name, "-p", str(IRIS), "--tag", "stage=dev")
    assert code == 0 and out.startswith(f"{name}:1  sha256:")
    code, out, _ = cli("model", "register", "-n", name, "-p", str(IRIS), "--tag", "stage=prod")
    assert code == 0 and out.startswith(f"{name}:2  sha256:")
    code, out, _ = cli("model", "list", "-n", name, "--json")
    listed = json.loads(out)
    assert [m["version"] for m in listed] == [1, 2]
    assert listed[0]["files"][0]["onnx"]["inputs"][0] == {
        "name": "input",
        "dtype": "float32",
        "shape": [None, 4],
    }
    assert listed[0]["files"][0]["onnx"]["opsets"][""] == 17


def test_tag_filter_selects_matching_versions(cli) -> None:
    name = _unique("tagged")
    cli("model", "register", "-n", name, "-p", str(IRIS), "--tag", "stage=dev", "--tag", "team=vision")
    cli("model", "register", "-n", name, "-p", str(IRIS), "--tag", "stage=prod")
    _, out, _ = cli("model", "list", "-n", name, "--tag", "stage=prod", "--json")
    assert [m["version"] for m in json.loads(out)] == [2]
    _, out, _ = cli("model", "list", "-n", name, "--tag", "team", "--json")
    assert [m["version"] for m in json.loads(out)] == [1]
    _, out, _ = cli("model", "list", "--tag", "stage=dev", "--json")
    assert any(m["name"] == name and m["version"] == 1 for m in json.loads(out))


def test_show_download_and_delete(cli, tmp_path: Path) -> None:
    name = _unique("folder")
    folder = tmp_path / "model"
    (folder / "nested").mkdir(parents=True)
    shutil.copy(IRIS, folder / "model.onnx")
    (folder / "nested" / "labels.txt").write_text("setosa\nversicolor\nvirginica\n")
    cli(
        "model",
        "register",
        "-n",
        name,
        "-p",
        str(folder),
        "--description",
        "iris classifier",
        "--property",
        "accuracy=0.97",
    )
    code, out, _ = cli("model", "show", name, "--json")
    shown = json.loads(out)
    assert code == 0 and shown["version"] == 1 and shown["description"] == "iris classifier"
    assert shown["properties"] == {"accuracy": "0.97"} and shown["framework"] == "onnx"
    # As Azure ML registers a folder: its files under the folder's own name.
    assert sorted(f["path"] for f in shown["files"]) == ["model/model.onnx", "model/nested/labels.txt"]
    code, out, _ = cli("model", "show", f"{name}:1")
    assert "input  input: float32[?, 4]" in out

    code, _, _ = cli("model", "download", f"{name}:1", "-o", str(tmp_path / "out"))
    assert code == 0
    assert (tmp_path / "out" / "model" / "model.onnx").read_bytes() == IRIS.read_bytes()
    assert (tmp_path / "out" / "model" / "nested" / "labels.txt").read_text().startswith("setosa")
    assert not list((tmp_path / "out").rglob("*.partial"))

    code, out, _ = cli("model", "delete", f"{name}:1")
    assert code == 0 and out.strip() == f"deleted {name}:1"
    code, _, err = cli("model", "show", f"{name}:1")
    assert code == 1 and "does not exist" in err


def test_download_refuses_to_overwrite_different_file(cli, tmp_path: Path) -> None:
    name = _unique("nooverwrite")
    cli("model", "register", "-n", name, "-p", str(IRIS))
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "model.onnx").write_bytes(b"my own work")
    code, _, err = cli("model", "download", name, "-o", str(tmp_path / "out"))
    assert code == 1 and "already exists" in err
    assert (tmp_path / "out" / "model.onnx").read_bytes() == b"my own work"
    assert cli("model", "download", name, "-o", str(tmp_path / "out"), "--overwrite")[0] == 0
    assert (tmp_path / "out" / "model.onnx").read_bytes() == IRIS.read_bytes()


def test_python_api_mirrors_azure_ml(registry: Service, tmp_path: Path) -> None:
    ws = Workspace.create(tmp_path, registry=registry.url)
    name = _unique("api")
    model = Model.register(ws, model_path=str(IRIS), model_name=name, tags={"area": "iris"}, description="d")
    assert (model.name, model.version, model.tags) == (name, 1, {"area": "iris"})
    again = Model(ws, name)
    assert again.digest == model.digest and again.files[0].onnx is not None
    assert [m.version for m in Model.list(ws, name=name, tags=[["area", "iris"]])] == [1]
    assert Path(model.download(tmp_path / "dl")).joinpath("model.onnx").exists()
    model.delete()
    assert Model.list(ws, name=name) == []


# -- errors: one line, non-zero exit, no traceback (run as a real process) ------------------------


def _run_cli(*argv: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "modules.cli", *argv],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=60,
    )


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELFLEET_")}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1])
    env.update(extra)
    return env


def _assert_one_line_error(proc: subprocess.CompletedProcess[str], needle: str) -> None:
    assert proc.returncode != 0, proc
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("modelfleet: error: ") and needle in lines[0], lines[0]


@pytest.mark.parametrize(
    ("case", "needle"),
    [
        ("missing-path", "does not exist"),
        ("not-onnx", "is not a valid ONNX model"),
        ("duplicate-version", "already exists"),
    ],
)
def test_bad_input_is_a_one_line_error(distribution: Service, tmp_path: Path, case: str, needle: str) -> None:
    env = _clean_env(MODELFLEET_REGISTRY=distribution.url)
    name = _unique("bad")
    path = tmp_path / "nothing-here.onnx"
    if case == "not-onnx":
        path.write_text("definitely not a protobuf")
    if case == "duplicate-version":
        path = IRIS
        assert (
            _run_cli(
                "model", "register", "-n", name, "-p", str(path), "--version", "3", env=env, cwd=tmp_path
            ).returncode
            == 0
        )
    proc = _run_cli("model", "register", "-n", name, "-p", str(path), "--version", "3", env=env, cwd=tmp_path)
    _assert_one_line_error(proc, needle)


def test_unreachable_registry_is_a_one_line_error(tmp_path: Path) -> None:
    env = _clean_env(MODELFLEET_REGISTRY=f"127.0.0.1:{free_port()}")
    proc = _run_cli("model", "list", env=env, cwd=tmp_path)
    _assert_one_line_error(proc, "cannot reach registry")


def test_wrong_credentials_are_a_one_line_error(distribution_basic_auth: Service, tmp_path: Path) -> None:
    env = _clean_env(
        MODELFLEET_REGISTRY=distribution_basic_auth.url,
        MODELFLEET_REGISTRY_USERNAME=REGISTRY_USER[0],
        MODELFLEET_REGISTRY_PASSWORD="wrong",
    )
    proc = _run_cli("model", "register", "-n", "iris", "-p", str(IRIS), env=env, cwd=tmp_path)
    _assert_one_line_error(proc, "refused the credentials")
    env["MODELFLEET_REGISTRY_PASSWORD"] = REGISTRY_USER[1]
    proc = _run_cli("model", "register", "-n", "iris", "-p", str(IRIS), env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("iris:1  sha256:")
