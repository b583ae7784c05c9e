"""Edge agent footprint: resident memory idle and with one module, and start-up time.

Reference, measured in the same run: a bare Python process that only imports what the agent
cannot do without (asyncio, paho-mqtt, pydantic, cryptography, aiohttp) — the floor any agent
written on these libraries starts from. The bench prints medians and the ratio agent / floor.

    python bench/agent_footprint.py            # 5 runs
    python bench/agent_footprint.py --runs 3
    python bench/agent_footprint.py --breakdown   # where the MiB above the floor go, step by step

Services: the embedded hub (`modelfleet hub up`) on free loopback ports, started by the bench.

The agent's own packages are byte-compiled first, as installing them does: the floor's libraries
come with their bytecode, and an agent run from a source tree with `PYTHONDONTWRITEBYTECODE` set
would otherwise be measured compiling its sources at every start (about 0.5 MiB more).
"""

from __future__ import annotations

import argparse
import compileall
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

FLOOR = (
    "import asyncio, paho.mqtt.client, pydantic, aiohttp;"
    "import cryptography.hazmat.primitives.asymmetric.ed25519;"
    "print('ready', flush=True); import time; time.sleep(60)"
)


# The agent's start, one step at a time in one process on top of the floor's imports, with the
# resident memory each step adds: what the daemon process loads, in the order it loads it.
# (`modelfleet agent run` reads its command line, then execs `edge_agent._daemon`: the
# dispatcher, argparse and the entry-point scan stay behind in the process it replaced.)
BREAKDOWN = """
import tempfile
from pathlib import Path
def rss():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) / 1024 for line in f if line.startswith("VmRSS:"))
import asyncio, paho.mqtt.client, pydantic, aiohttp
import cryptography.hazmat.primitives.asymmetric.ed25519
floor = last = rss()
def step(what):
    global last
    now = rss()
    print(f"  {now - last:5.2f} MiB  {what}")
    last = now
import edge_agent._daemon
step("the daemon's module (what `agent run` execs once its command line is read)")
from pydantic import BaseModel
step("pydantic.main (the floor's `import pydantic` loads almost nothing)")
class _First(BaseModel):
    x: int
step("the first model build: pydantic's schema generation, its plugin lookup (importlib.metadata)")
import modules.device_state, modules.mqtt, modules.service_keys, modules.deployment
step("the contract an idle agent speaks: reported state, MQTT client, sealed keys, signing")
import edge_agent._agent
step("the agent's parts: intake, planner, state, status book (the runtime loads with a module)")
from modules.service_keys import open_device_key
with tempfile.TemporaryDirectory() as folder:
    open_device_key(Path(folder) / "device-x25519.pem", make_apart=True)
step("the device's X25519 key: made by a child process, its public half read (as the daemon does)")
print(f"  {last - floor:5.2f} MiB  in all, before the agent runs (then its loop, connection, status server)")
"""


def breakdown() -> None:
    print(f"floor: {measure_floor()[0]:.1f} MiB; above it, step by step:")
    subprocess.run([sys.executable, "-c", BREAKDOWN], cwd=ROOT, check=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def wait(predicate, timeout: float, what: str):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise SystemExit(f"timed out waiting for {what}")


def status(port: int) -> dict | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/status", timeout=1) as resp:
            return json.loads(resp.read())
    except OSError:
        return None


def measure_floor() -> tuple[float, float]:
    started = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-c", FLOOR], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    proc.stdout.readline()
    elapsed = time.monotonic() - started
    time.sleep(0.5)
    rss = rss_mib(proc.pid)
    proc.kill()
    proc.wait()
    return rss, elapsed


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--idle-seconds", type=float, default=3.0)
    parser.add_argument("--breakdown", action="store_true", help="only show where the agent's MiB go")
    args = parser.parse_args()
    for package in ("modules", "edge_agent"):
        compileall.compile_dir(ROOT / package, quiet=1)
    if args.breakdown:
        breakdown()
        return 0

    from modules.deployment import DeploymentDocument, sign_document
    from modules.signing import load_signing_key
    from modules.topics import FleetTopics
    from publisher import Model, Module, Workspace
    from tests.edge_agent._fleet import publish

    work = Path(tempfile.mkdtemp(prefix="modelfleet-footprint-"))
    registry_port, mqtt_port = free_port(), free_port()
    hub = subprocess.Popen(
        [sys.executable, "-m", "modules.cli", "hub", "up", "--data-dir", str(work / "hub"),
         "--registry-port", str(registry_port), "--mqtt-port", str(mqtt_port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait(lambda: socket.socket().connect_ex(("127.0.0.1", registry_port)) == 0, 30, "hub")
        ws = Workspace.create(work / "ws", registry=f"http://127.0.0.1:{registry_port}")
        (work / "trust.pem").write_text(ws.public_key_pem())
        key = load_signing_key(ws.signing_key_path)
        model = Model.register(ws, ROOT / "examples" / "models" / "iris" / "model.onnx", "iris")
        module = Module.package(
            ws, "iris-svc", [model], entry_script=ROOT / "examples" / "iris-service" / "score.py"
        )

        rows: dict[str, list[float]] = {
            k: [] for k in ("floor_rss", "floor_start", "idle", "start", "one", "module")
        }
        for run in range(args.runs):
            floor_rss, floor_start = measure_floor()
            rows["floor_rss"].append(floor_rss)
            rows["floor_start"].append(floor_start)

            fleet, status_port, module_port = f"bench{run}", free_port(), free_port()
            started = time.monotonic()
            agent = subprocess.Popen(
                [sys.executable, "-m", "modules.cli", "agent", "run",
                 "--device-id", f"dev-{run}", "--fleet", fleet,
                 "--hub", f"mqtt://127.0.0.1:{mqtt_port}", "--registry", f"http://127.0.0.1:{registry_port}",
                 "--trust", str(work / "trust.pem"), "--data-dir", str(work / f"agent-{run}"),
                 "--status-port", str(status_port), "--listen-host", "127.0.0.1", "--log-level", "WARNING"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )  # fmt: skip
            try:
                wait(lambda port=status_port: status(port), 60, "agent status endpoint")
                rows["start"].append(time.monotonic() - started)
                time.sleep(args.idle_seconds)
                rows["idle"].append(rss_mib(agent.pid))

                doc = DeploymentDocument.model_validate(
                    {
                        "fleet": fleet, "name": "iris", "version": 1, "targetCondition": "*",
                        "createdAt": datetime.now(UTC).isoformat(),
                        "content": {"modulesContent": {"$edgeAgent": {"properties.desired": {
                            "schemaVersion": "1.1",
                            "modules": {"scorer": {"type": "modelfleet", "status": "running",
                                                   "restartPolicy": "always",
                                                   "settings": {"module": module.repository,
                                                                "digest": module.digest,
                                                                "port": module_port}}}}}}},
                    }
                )  # fmt: skip
                payload = json.dumps(sign_document(doc, key).to_json_dict()).encode()
                publish(mqtt_port, FleetTopics(fleet).deployment("iris"), payload)

                def running(port: int = status_port) -> dict | None:
                    scorer = (status(port) or {}).get("modules", {}).get("scorer")
                    return scorer if scorer and scorer["status"] == "running" else None

                scorer = wait(running, 120, "module running")
                time.sleep(args.idle_seconds)
                rows["one"].append(rss_mib(agent.pid))
                rows["module"].append(rss_mib(scorer["pid"]))
            finally:
                agent.send_signal(signal.SIGTERM)
                agent.wait(timeout=60)
            print(
                f"run {run + 1}: floor {floor_rss:.1f} MiB / {floor_start * 1000:.0f} ms; "
                f"agent idle {rows['idle'][-1]:.1f} MiB, with one module {rows['one'][-1]:.1f} MiB "
                f"(+ module process {rows['module'][-1]:.1f} MiB), start {rows['start'][-1] * 1000:.0f} ms",
                flush=True,
            )
    finally:
        hub.send_signal(signal.SIGINT)
        hub.wait(timeout=30)

    med = {k: statistics.median(v) for k, v in rows.items()}
    print(f"\nmedians of {args.runs} runs (this machine: {os.cpu_count()} CPUs)")
    print(f"  reference floor (python + asyncio, paho, pydantic, cryptography, aiohttp): "
          f"{med['floor_rss']:.1f} MiB RSS, {med['floor_start'] * 1000:.0f} ms to import")  # fmt: skip
    floor = med["floor_rss"]
    print(f"  agent idle, no modules:       {med['idle']:.1f} MiB RSS = {med['idle'] / floor:.2f}x floor")
    print(f"  agent with one module:        {med['one']:.1f} MiB RSS = {med['one'] / floor:.2f}x floor")
    print(f"  the module's scoring process: {med['module']:.1f} MiB RSS (ONNX Runtime + model)")
    ratio = med["start"] / med["floor_start"]
    print(f"  agent start-up to status API: {med['start'] * 1000:.0f} ms = {ratio:.2f}x floor import time")
    return 0


if __name__ == "__main__":
    sys.exit(main())
