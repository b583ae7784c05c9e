"""A real network fault: the device's link is cut for 120 s in the middle of a 40 MB download.

The test builds its own hosts: a server namespace (Mosquitto and the Distribution registry) and a
device namespace (the agent, as a real `modelfleet agent run` process), joined by a veth pair with
a `tbf` rate limit so the download takes long enough to be cut. Nothing leaves the namespaces the
test makes. The publisher runs inside the server namespace with the real CLI.

It shows: download progress in the reported state; a 120 s cut mid-download ends applied with no
new document; about the file size crosses the link in total (the partial file is resumed, not
fetched again); and the device is back online and truthful by itself afterwards.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests._services import _binary

pytestmark = [pytest.mark.services, pytest.mark.timeout(900)]

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
MODEL_BYTES = 40 * 1024 * 1024
RATE = "4mbit"  # 40 MB take ~80 s: the cut lands in the middle
CUT_S = 120
SERVER_IP, DEVICE_IP = "10.231.9.1", "10.231.9.2"
MQTT_PORT, REGISTRY_PORT, MODULE_PORT, STATUS_PORT = 1883, 5000, 8901, 8781


def _run(*args: str, check: bool = True, **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), check=check, capture_output=True, text=True, **kw)  # type: ignore[call-overload]


class Hosts:
    """Two network namespaces joined by a veth pair; the server side's egress is rate limited."""

    def __init__(self) -> None:
        tag = os.urandom(3).hex()
        self.server, self.device = f"mfs-{tag}", f"mfd-{tag}"
        self.server_if, self.device_if = f"vs{tag}", f"vd{tag}"

    def __enter__(self) -> Hosts:
        if os.geteuid() != 0:
            pytest.fail("network-fault tests need root (ip netns)", pytrace=False)
        if shutil.which("ip") is None or shutil.which("tc") is None:
            pytest.fail("iproute2 (ip, tc) is not installed", pytrace=False)
        _run("ip", "netns", "add", self.server)
        _run("ip", "netns", "add", self.device)
        _run("ip", "link", "add", self.server_if, "type", "veth", "peer", "name", self.device_if)
        _run("ip", "link", "set", self.server_if, "netns", self.server)
        _run("ip", "link", "set", self.device_if, "netns", self.device)
        for ns, dev, ip in (
            (self.server, self.server_if, SERVER_IP),
            (self.device, self.device_if, DEVICE_IP),
        ):
            _run("ip", "-n", ns, "addr", "add", f"{ip}/30", "dev", dev)
            _run("ip", "-n", ns, "link", "set", dev, "up")
            _run("ip", "-n", ns, "link", "set", "lo", "up")
        _run(
            "ip", "netns", "exec", self.server, "tc", "qdisc", "add", "dev", self.server_if, "root",
            "tbf", "rate", RATE, "burst", "32kbit", "latency", "400ms",
        )  # fmt: skip
        return self

    def __exit__(self, *exc: object) -> None:
        for ns in (self.server, self.device):
            _run("ip", "netns", "pids", ns, check=False)
            for pid in _run("ip", "netns", "pids", ns, check=False).stdout.split():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(pid), signal.SIGKILL)
            _run("ip", "netns", "del", ns, check=False)

    def cmd(self, ns: str, *args: str) -> list[str]:
        return ["ip", "netns", "exec", ns, *args]

    def link(self, up: bool) -> None:
        _run("ip", "-n", self.server, "link", "set", self.server_if, "up" if up else "down")

    def sent_by_server(self) -> int:
        path = f"/sys/class/net/{self.server_if}/statistics/tx_bytes"
        return int(_run(*self.cmd(self.server, "cat", path)).stdout)


def _python(hosts: Hosts, ns: str, code: str, *args: str, timeout: float = 60) -> str:
    result = _run(*hosts.cmd(ns, sys.executable, "-c", code, *args), timeout=timeout, cwd=ROOT)
    return result.stdout


STATUS = """
import json, sys, urllib.request
try:
    with urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/status", timeout=5) as r:
        print(r.read().decode())
except OSError:
    print("null")
"""

PRESENCE = """
import json, sys, threading
import paho.mqtt.client as mqtt
got = []
c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="probe")
c.on_message = lambda _c, _u, m: got.append(m.payload.decode())
c.connect("127.0.0.1", int(sys.argv[1]))
c.subscribe(sys.argv[2], qos=1)
c.loop_start()
import time; time.sleep(1.5)
c.loop_stop(); c.disconnect()
print(got[-1] if got else "null")
"""


def _status(hosts: Hosts) -> dict | None:
    return json.loads(_python(hosts, hosts.device, STATUS, str(STATUS_PORT)) or "null")


def _until(predicate, timeout: float, what: str, period: float = 1.0):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(period)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


@contextlib.contextmanager
def _process(argv: list[str], log: Path, **kw: object) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, **kw)  # type: ignore[call-overload]
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()


def test_a_120_s_cut_mid_download_ends_applied_with_the_file_fetched_about_once(tmp_path: Path) -> None:
    mosquitto = _binary("mosquitto", "mosquitto")
    registry = _binary("docker-registry", "docker-registry")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELFLEET_")}
    with Hosts() as hosts:
        (tmp_path / "mosquitto.conf").write_text(
            f"listener {MQTT_PORT} 0.0.0.0\nallow_anonymous true\npersistence false\n"
        )
        (tmp_path / "registry.yml").write_text(
            "version: 0.1\nlog:\n  level: warn\n  accesslog:\n    disabled: true\n"
            f"storage:\n  filesystem:\n    rootdirectory: {tmp_path / 'registry'}\n"
            f"http:\n  addr: 0.0.0.0:{REGISTRY_PORT}\n"
        )
        with (
            _process(
                hosts.cmd(hosts.server, mosquitto, "-c", str(tmp_path / "mosquitto.conf")),
                tmp_path / "mq.log",
            ),
            _process(
                hosts.cmd(hosts.server, registry, "serve", str(tmp_path / "registry.yml")),
                tmp_path / "reg.log",
            ),
        ):
            # The publisher, inside the server namespace, with the real CLI.
            ws = tmp_path / "ws"
            ws.mkdir()
            model = tmp_path / "big-model"
            model.mkdir()
            shutil.copy(EXAMPLES / "models" / "iris" / "model.onnx", model / "model.onnx")
            (model / "weights.bin").write_bytes(os.urandom(MODEL_BYTES))
            cli = [sys.executable, "-m", "modules.cli"]
            pub_env = {**env, "PYTHONPATH": str(ROOT)}

            def publisher(*args: str) -> str:
                argv = hosts.cmd(hosts.server, *cli, *args)
                result = subprocess.run(
                    argv, cwd=ws, env=pub_env, capture_output=True, text=True, timeout=120
                )
                assert result.returncode == 0, f"{args}: {result.stdout}{result.stderr}"
                return result.stdout

            time.sleep(1.0)
            publisher(
                "init",
                "--registry",
                f"http://127.0.0.1:{REGISTRY_PORT}",
                "--hub",
                f"mqtt://127.0.0.1:{MQTT_PORT}",
            )
            publisher("model", "register", "-n", "big", "-p", str(model))
            publisher(
                "module", "package", "-n", "big-svc", "-m", "big:1",
                "--entry-script", str(EXAMPLES / "iris-service" / "score.py"),
                "--sample-input", str(EXAMPLES / "models" / "iris" / "sample-input.json"),
            )  # fmt: skip
            (tmp_path / "publisher.pem").write_text(publisher("key", "public"))

            # The device.
            (tmp_path / "agent.toml").write_text(
                "[agent]\nretry_base_s = 2\nretry_max_s = 8\nheartbeat_s = 5\n"
            )
            agent_argv = hosts.cmd(
                hosts.device, *cli, "agent", "run", "--config", str(tmp_path / "agent.toml"),
                "--device-id", "dev-net", "--hub", f"mqtt://{SERVER_IP}:{MQTT_PORT}",
                "--registry", f"http://{SERVER_IP}:{REGISTRY_PORT}",
                "--trust", str(tmp_path / "publisher.pem"), "--data-dir", str(tmp_path / "agent"),
                "--status-port", str(STATUS_PORT), "--listen-host", "127.0.0.1",
            )  # fmt: skip
            with _process(agent_argv, tmp_path / "agent.log", cwd=ROOT, env=pub_env):
                _until(lambda: _status(hosts), 60, "the agent's status endpoint")
                sent_before = hosts.sent_by_server()
                publisher("deploy", "create", "-n", "big", "--module", "big-svc", "--port", str(MODULE_PORT))

                # Progress is in the reported state while the model crosses the link.
                def downloading() -> dict | None:
                    state = _status(hosts) or {}
                    for module in (state.get("modules") or {}).values():
                        download = module.get("download")
                        if download and download["done_bytes"] > 4 * 1024 * 1024:
                            return download
                    return None

                progress = _until(downloading, 120, "download progress in the reported state")
                assert progress["total_bytes"] >= MODEL_BYTES

                hosts.link(up=False)
                cut_at = time.monotonic()
                # During the cut: the device keeps what it has and says the update is retrying.
                retrying = _until(
                    lambda: (
                        (d := ((_status(hosts) or {}).get("deployments") or {}).get("big"))
                        and "retrying at" in (d.get("reason") or "")
                        and d
                    ),
                    CUT_S - 10,
                    "the update reported as retrying",
                )
                assert retrying["outcome"] == "applying"
                partials = list((tmp_path / "agent" / "store" / "blobs").rglob("*.partial"))
                assert partials, "the partial download must survive the failed attempts"
                time.sleep(max(0.0, CUT_S - (time.monotonic() - cut_at)))
                hosts.link(up=True)

                def applied() -> dict | None:
                    state = _status(hosts) or {}
                    deployment = (state.get("deployments") or {}).get("big") or {}
                    modules = state.get("modules") or {}
                    running = [m for m in modules.values() if m.get("status") == "running"]
                    return state if deployment.get("outcome") == "applied" and running else None

                state = _until(applied, 300, "the deployment applied after the link came back")
                sent = hosts.sent_by_server() - sent_before
                assert sent < MODEL_BYTES * 1.2, (
                    f"{sent} bytes crossed the link for a {MODEL_BYTES}-byte model"
                )
                print(f"{sent / MODEL_BYTES:.3f}x the model's size crossed the link, {CUT_S} s cut")
                # truthful: no stale error, no download left, and online on the broker
                for module in state["modules"].values():
                    assert module.get("last_error") is None and module.get("download") is None
                presence = _python(
                    hosts, hosts.server, PRESENCE, str(MQTT_PORT), "modelfleet/default/devices/dev-net/status"
                )
                assert json.loads(presence)["online"] is True
