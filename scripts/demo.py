"""The quick start on the embedded defaults: hub up, register, package, show.

Runs the same `modelfleet` commands a user would type, printing each one first, in a scratch
workspace under `.demo/`. Stops the hub it started whatever happens.
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / ".demo"
EXAMPLES = ROOT / "examples"
BIN = Path(sys.executable).parent


def _port(preferred: int) -> int:
    """The default port when it is free, any free loopback port otherwise."""
    for candidate in (preferred, 0):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", candidate))
            except OSError:
                continue
            return s.getsockname()[1]
    raise SystemExit("no free port on 127.0.0.1")


def _modelfleet(*args: str, cwd: Path = DEMO / "workspace") -> None:
    print(f"\n$ modelfleet {shlex.join(args)}", flush=True)
    proc = subprocess.run([str(BIN / "modelfleet"), *args], cwd=cwd, env=os.environ.copy())
    if proc.returncode != 0:
        raise SystemExit(f"demo step failed: modelfleet {' '.join(args)} (exit {proc.returncode})")


def _start_hub(registry_port: int, mqtt_port: int) -> subprocess.Popen[str]:
    cmd = [
        str(BIN / "modelfleet"), "hub", "up", "--data-dir", str(DEMO / "hub"),
        "--registry-port", str(registry_port), "--mqtt-port", str(mqtt_port),
    ]  # fmt: skip
    print(
        f"$ modelfleet hub up --data-dir .demo/hub --registry-port {registry_port} --mqtt-port {mqtt_port} &"
    )
    hub = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", registry_port)) == 0:
                return hub
        if hub.poll() is not None:
            raise SystemExit(f"hub exited with {hub.returncode}")
        time.sleep(0.1)
    hub.kill()
    raise SystemExit("hub did not start within 30 s")


def main() -> int:
    shutil.rmtree(DEMO, ignore_errors=True)
    (DEMO / "workspace").mkdir(parents=True)
    for key in [k for k in os.environ if k.startswith("MODELFLEET_")]:
        del os.environ[key]
    registry_port, mqtt_port = _port(5000), _port(1883)
    hub = _start_hub(registry_port, mqtt_port)
    try:
        _modelfleet(
            "init",
            "--registry",
            f"http://127.0.0.1:{registry_port}",
            "--hub",
            f"mqtt://127.0.0.1:{mqtt_port}",
        )
        _modelfleet("key", "public")
        iris = EXAMPLES / "models" / "iris"
        _modelfleet("model", "register", "-n", "iris", "-p", str(iris / "model.onnx"),
                    "--tag", "task=classification",
                    "--description", "Iris species, logistic regression")  # fmt: skip
        _modelfleet(
            "model", "register", "-n", "iris", "-p", str(iris / "model.onnx"), "--tag", "stage=candidate"
        )
        _modelfleet("model", "list")
        _modelfleet("model", "show", "iris:1")
        _modelfleet("module", "package", "-n", "iris-service", "-m", "iris:1",
                    "--entry-script", str(EXAMPLES / "iris-service" / "score.py"),
                    "--requirements", str(EXAMPLES / "iris-service" / "requirements.txt"),
                    "--sample-input", str(iris / "sample-input.json"))  # fmt: skip
        _modelfleet("module", "package", "-n", "iris-service", "-m", "iris:2",
                    "--entry-script", str(EXAMPLES / "iris-service" / "score.py"),
                    "--sample-input", str(iris / "sample-input.json"))  # fmt: skip
        _modelfleet("module", "list")
        _modelfleet("module", "show", "iris-service")
    finally:
        hub.send_signal(signal.SIGINT)
        try:
            hub.wait(timeout=15)
        except subprocess.TimeoutExpired:
            hub.kill()
    print(
        f"\nDone: the hub is stopped, its data is kept in .demo/hub.\n"
        "Try next:\n"
        "  .venv/bin/modelfleet hub up --data-dir .demo/hub          # bring it back\n"
        "  cd .demo/workspace && ../../.venv/bin/modelfleet model list --json\n"
        f"  skopeo inspect --tls-verify=false --raw docker://127.0.0.1:{registry_port}/modules/iris-service:1\n"
        "  read README.md for the step-by-step walk through"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
