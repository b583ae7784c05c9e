"""`modelfleet hub up` as a user runs it: a subprocess, URLs on stdout, Ctrl-C to stop."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from modules.hub import cli

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def spawn(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "modules.cli", "hub", "up", *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def read_exports(proc: subprocess.Popen[str], timeout: float = 30) -> dict[str, str]:
    exports: dict[str, str] = {}
    deadline = time.monotonic() + timeout
    assert proc.stdout is not None
    while len(exports) < 2 and time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        if line.strip().startswith("export "):
            key, _, value = line.strip().removeprefix("export ").partition("=")
            exports[key] = value
    return exports


def test_hub_up_serves_and_stops_on_sigint(tmp_path: Path) -> None:
    registry_port, mqtt_port = free_port(), free_port()
    data_dir = tmp_path / "hub-data"
    proc = spawn(
        "--data-dir", str(data_dir),
        "--registry-port", str(registry_port),
        "--mqtt-port", str(mqtt_port),
    )  # fmt: skip
    try:
        exports = read_exports(proc)
        assert exports == {
            "MODELFLEET_REGISTRY": f"http://127.0.0.1:{registry_port}",
            "MODELFLEET_HUB": f"mqtt://127.0.0.1:{mqtt_port}",
        }, proc.stderr.read() if proc.poll() is not None else exports
        with urllib.request.urlopen(exports["MODELFLEET_REGISTRY"] + "/v2/", timeout=10) as resp:
            assert resp.status == 200
            assert resp.headers["Docker-Distribution-API-Version"] == "registry/2.0"
        with socket.create_connection(("127.0.0.1", mqtt_port), timeout=5):
            pass
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=30)
        assert proc.returncode == 0, stderr
        assert "Traceback" not in stderr
        assert (data_dir / "registry" / "repos").is_dir()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_hub_up_port_in_use(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = spawn(
            "--data-dir", str(tmp_path / "d"),
            "--registry-port", str(port),
            "--mqtt-port", str(free_port()),
        )  # fmt: skip
        _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 1
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("modelfleet: error: ")
    assert str(port) in lines[0]


def test_mqtt_port_in_use_releases_registry(tmp_path: Path, capsys) -> None:
    registry_port = free_port()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        mqtt_port = taken.getsockname()[1]
        argv = ["hub", "up", "--data-dir", str(tmp_path / "d"),
                "--registry-port", str(registry_port), "--mqtt-port", str(mqtt_port)]  # fmt: skip
        assert cli.main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith("modelfleet: error: MQTT broker cannot listen")
    with socket.socket() as again:
        again.bind(("127.0.0.1", registry_port))  # The registry let go of its port.


def test_unusable_data_dir(tmp_path: Path, capsys) -> None:
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")
    argv = ["hub", "up", "--data-dir", str(not_a_dir),
            "--registry-port", str(free_port()), "--mqtt-port", str(free_port())]  # fmt: skip
    assert cli.main(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert err[0].startswith("modelfleet: error: cannot use data directory")
