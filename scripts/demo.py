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
import urllib.request
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


AGENTS = [("press-1", "a"), ("press-2", "a"), ("press-3", "a"), ("lab-1", "b")]
MODULE_PORT = 8900


def _start_agents(registry_port: int, mqtt_port: int) -> list[subprocess.Popen[bytes]]:
    procs = []
    for index, (device, site) in enumerate(AGENTS):
        data = DEMO / "devices" / device
        data.mkdir(parents=True)
        print(f"$ modelfleet agent run --device-id {device} --tag site={site} --port-base {index * 10} ... &")
        log = (data / "agent.log").open("wb")
        procs.append(
            subprocess.Popen(
                [str(BIN / "modelfleet"), "agent", "run", "--device-id", device, "--tag", f"site={site}",
                 "--hub", f"mqtt://127.0.0.1:{mqtt_port}", "--registry", f"http://127.0.0.1:{registry_port}",
                 "--trust", str(DEMO / "workspace" / "publisher.pem"), "--data-dir", str(data),
                 "--port-base", str(index * 10), "--status-port", str(_port(0)),
                 "--listen-host", "127.0.0.1"],
                stdout=log, stderr=subprocess.STDOUT,
            )
        )  # fmt: skip
    return procs


def _score(port: int) -> None:
    body = (EXAMPLES / "models" / "iris" / "sample-input.json").read_bytes()
    print(f"\n$ curl -X POST http://127.0.0.1:{port}/score -d @examples/models/iris/sample-input.json")
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/score", data=body, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=10) as resp:
        print(resp.read().decode())


def main() -> int:
    started = time.monotonic()
    shutil.rmtree(DEMO, ignore_errors=True)
    (DEMO / "workspace").mkdir(parents=True)
    for key in [k for k in os.environ if k.startswith("MODELFLEET_")]:
        del os.environ[key]
    registry_port, mqtt_port = _port(5000), _port(1883)
    hub = _start_hub(registry_port, mqtt_port)
    agents: list[subprocess.Popen[bytes]] = []
    try:
        _modelfleet(
            "init",
            "--registry",
            f"http://127.0.0.1:{registry_port}",
            "--hub",
            f"mqtt://127.0.0.1:{mqtt_port}",
        )
        print("\n$ modelfleet key public > publisher.pem")
        pem = subprocess.run(
            [str(BIN / "modelfleet"), "key", "public"],
            cwd=DEMO / "workspace",
            capture_output=True,
            check=True,
        ).stdout
        (DEMO / "workspace" / "publisher.pem").write_bytes(pem)
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
                    "--sample-input", str(iris / "sample-input.json"))  # fmt: skip
        _modelfleet("module", "package", "-n", "iris-service", "-m", "iris:2",
                    "--entry-script", str(EXAMPLES / "iris-service" / "score.py"),
                    "--sample-input", str(iris / "sample-input.json"))  # fmt: skip
        _modelfleet("module", "list")

        print()
        agents = _start_agents(registry_port, mqtt_port)
        time.sleep(2)  # let them connect and report
        _modelfleet("deploy", "create", "-n", "iris-prod", "--module", "iris-service:1",
                    "--target", "tags.site = 'a'", "--port", str(MODULE_PORT),
                    "--rollout", "34%,100%", "--min-healthy", "2", "--wait", "--timeout", "120")  # fmt: skip
        _score(MODULE_PORT)  # press-1 (port base 0)
        _modelfleet("status")
        _modelfleet(
            "deploy", "update", "-n", "iris-prod", "--module", "iris-service:2", "--wait", "--timeout", "120"
        )
        _modelfleet("status")
        _modelfleet("device", "ping", "lab-1")
    finally:
        for proc in agents:
            proc.send_signal(signal.SIGTERM)
        for proc in agents:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
        hub.send_signal(signal.SIGINT)
        try:
            hub.wait(timeout=15)
        except subprocess.TimeoutExpired:
            hub.kill()
    print(
        f"\nDone in {time.monotonic() - started:.0f} s: agents and hub are stopped; data is kept in .demo/.\n"
        "Try next:\n"
        "  .venv/bin/modelfleet hub up --data-dir .demo/hub          # bring the hub back\n"
        "  cd .demo/workspace && ../../.venv/bin/modelfleet model list --json\n"
        "  cd .demo/workspace && ../../.venv/bin/modelfleet serve --module iris-service  # serve it here\n"
        f"  skopeo inspect --tls-verify=false --raw docker://127.0.0.1:{registry_port}/modules/iris-service:1\n"
        "  README.md walks through every step by hand; docs/ has the details"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
