import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
import requests

from modules.scoring.cli import main

from .conftest import IRIS_DIR, IRIS_SCRIPT, ROOT


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_ready(url: str, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert process.poll() is None, process.communicate()[1]
        try:
            if requests.get(url + "/ready", timeout=2).status_code == 200:
                return
        except requests.ConnectionError:
            pass
        time.sleep(0.1)
    raise AssertionError("host did not become ready")


def _spawn(args: list[str], env: dict[str, str] | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
    )


def test_serve_entry_script_with_key_from_environment_and_stop_on_ctrl_c():
    port = _free_port()
    process = _spawn(
        [
            "-m",
            "modules.cli",
            "serve",
            "--entry-script",
            str(IRIS_SCRIPT),
            "--model-dir",
            str(IRIS_DIR),
            "--port",
            str(port),
        ],
        env={"MODELFLEET_SCORING_PRIMARY_KEY": "k1"},
    )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(url, process)
        body = json.dumps({"data": [[5.1, 3.5, 1.4, 0.2]]})
        denied = requests.post(url + "/score", body, timeout=30)
        allowed = requests.post(url + "/score", body, headers={"Authorization": "Bearer k1"}, timeout=30)
    finally:
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=30)

    assert denied.status_code == 401
    assert allowed.json()["predictions"] == ["setosa"]
    assert process.returncode == 0
    assert "Traceback" not in stderr
    assert "stopped" in stderr


def test_python_m_modules_scoring_reads_a_settings_file_and_stops_on_sigterm(tmp_path):
    port = _free_port()
    settings = tmp_path / "settings.json"
    settings.write_text(
        json.dumps(
            {"model_dir": str(IRIS_DIR), "port": port, "batching": {"max_batch_size": 4, "max_wait_ms": 1}}
        )
    )
    process = _spawn(["-m", "modules.scoring", "--settings-file", str(settings)])
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(url, process)
        response = requests.post(url + "/score", json={"data": [[5.1, 3.5, 1.4, 0.2]]}, timeout=30)
    finally:
        process.send_signal(signal.SIGTERM)
        process.communicate(timeout=30)

    assert response.json()["label"] == [0]
    assert process.returncode == 0


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["serve", "--model-dir", "/no/such/folder"], "model folder /no/such/folder does not exist"),
        (
            ["serve", "--model-dir", str(IRIS_DIR), "--entry-script", "/no/score.py"],
            "entry script /no/score.py does not exist",
        ),
        (["serve", "--model-dir", str(ROOT / "tests")], "no .onnx file under"),
        (["serve", "--model-dir", str(IRIS_DIR), "--provider", "tpu"], "invalid execution_provid"),
        (["serve", "--module", "iris:3"], "--module is not available yet"),
    ],
)
def test_bad_arguments_are_one_line_errors_with_non_zero_exit(capsys, argv, message):
    code = main(argv)

    err = capsys.readouterr().err
    assert code == 2
    assert message in err
    assert err.startswith("modelfleet: error: ")
    assert err.count("\n") == 1


def test_error_details_default_on_only_for_an_entry_script_on_loopback():
    from modules.scoring.cli import build_parser, settings_from_args

    def settings(*extra: str):
        return settings_from_args(build_parser().parse_args(["--model-dir", str(IRIS_DIR), *extra]))

    script = str(IRIS_SCRIPT)
    assert settings("--entry-script", script).error_details is True
    assert settings("--entry-script", script, "--host", "0.0.0.0").error_details is False
    assert settings("--entry-script", script, "--no-error-details").error_details is False
    assert settings("--host", "0.0.0.0", "--entry-script", script, "--error-details").error_details is True
    assert settings().error_details is False  # zero-code: nothing of a script's to show
    assert settings("--cors-origins", "https://a.example, *").cors_origins == ["https://a.example", "*"]


def test_inline_threshold_flag_reaches_the_settings():
    from modules.scoring.cli import build_parser, settings_from_args

    def settings(*extra: str):
        return settings_from_args(build_parser().parse_args(["--model-dir", str(IRIS_DIR), *extra]))

    assert settings().inline_below_ms == 1.0
    assert settings("--inline-below-ms", "0").inline_below_ms == 0
    assert settings("--inline-below-ms", "2.5").inline_below_ms == 2.5


def test_azmlinfsrv_spellings_and_its_model_dir_variable_are_taken(monkeypatch):
    from modules._errors import ConfigError
    from modules.scoring.cli import build_parser, settings_from_args

    def settings(*argv: str):
        return settings_from_args(build_parser().parse_args(list(argv)))

    azure_style = settings("--entry_script", str(IRIS_SCRIPT), "--model_dir", str(IRIS_DIR))
    assert (azure_style.entry_script, azure_style.model_dir) == (IRIS_SCRIPT, IRIS_DIR)
    more = settings(
        "--model_dir",
        str(IRIS_DIR),
        "--worker_count",
        "3",
        "--access_control_allow_origins",
        "https://a.example",
    )
    assert (more.processes, more.cors_origins) == (3, ["https://a.example"])

    monkeypatch.delenv("AZUREML_MODEL_DIR", raising=False)
    with pytest.raises(ConfigError, match="--model-dir is required \\(or AZUREML_MODEL_DIR"):
        settings("--entry-script", str(IRIS_SCRIPT))
    monkeypatch.setenv("AZUREML_MODEL_DIR", str(IRIS_DIR))
    assert settings("--entry-script", str(IRIS_SCRIPT)).model_dir == IRIS_DIR
    # an explicit folder wins over the variable
    assert settings("--entry-script", str(IRIS_SCRIPT), "--model-dir", str(ROOT / "examples")).model_dir == (
        ROOT / "examples"
    )


def test_an_entry_script_sees_azureml_entry_script_and_imports_modules_beside_it(serve_host, tmp_path):
    (tmp_path / "beside.py").write_text("WORD = 'beside'\n")
    script = tmp_path / "where.py"
    script.write_text(
        "import os\n"
        "from beside import WORD\n"
        "def init():\n    pass\n"
        "def run(raw):\n    return {'entry': os.environ.get('AZUREML_ENTRY_SCRIPT'), 'word': WORD}\n"
    )
    host = serve_host(model_dir=IRIS_DIR, entry_script=script)
    host.wait_loaded()

    reply = requests.post(f"{host.url}/score", json={}, timeout=30)

    assert reply.json() == {"entry": os.path.realpath(script), "word": "beside"}
