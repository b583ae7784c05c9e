"""The transport under paho-mqtt 1.6.1, the version azure-iot-device 2.14 pins.

The suite itself runs on paho 2.x, so this test builds (once per session) a venv that sees the
system packages but has paho-mqtt 1.6.1 installed over them, and runs a script with that venv's
Python against a real Mosquitto: connect, subscribe, publish, receive, a refused CONNACK, and a
broker restart, which exercise every paho callback whose signature changed in 2.0.

Installing needs the package index. If it cannot be reached the test fails, saying so: skipping
would leave the paho 1.6 promise unproven without anyone noticing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests._services import free_port, run_mosquitto_at

PAHO_VERSION = "1.6.1"
REPO_ROOT = Path(__file__).resolve().parents[2]
GUARD_S = 120  # hang guard for the script, not a performance bound

SCRIPT = r"""
import asyncio, json, sys
import paho.mqtt
import paho.mqtt.client as mqtt
from pydantic import SecretStr
from modules.mqtt import Message, MqttConnectError, MqttSettings, MqttTransport

async def main():
    url, auth_url = sys.argv[1], sys.argv[2]
    result = {"paho": paho.mqtt.__version__, "has_callback_api": hasattr(mqtt, "CallbackAPIVersion")}

    wrong = MqttTransport(MqttSettings(url=auth_url, client_id="p16-wrong", username="agent",
                                       password=SecretStr("wrong")))
    try:
        await wrong.start(connect_timeout=60)
        result["refused"] = None
    except MqttConnectError as exc:
        result["refused"] = str(exc)
    await wrong.stop()

    right = MqttTransport(MqttSettings(url=auth_url, client_id="p16-right", username="agent",
                                       password=SecretStr("s3cret")))
    await right.start()
    result["authenticated"] = right.connected
    await right.stop()

    connects = []
    again = asyncio.Event()
    async def on_connect():
        connects.append(1)
        if len(connects) == 2:
            again.set()

    transport = MqttTransport(
        MqttSettings(url=url, client_id="p16", reconnect_min_s=0.05, reconnect_max_s=0.5),
        will=("p16/status", b"offline", True),
    )
    transport.subscribe("p16/data/#")  # not the will: Mosquitto sends wills as it shuts down
    transport.on_connect(on_connect)
    await transport.start()
    messages = transport.messages()
    await transport.publish("p16/data/retained", b"r", retain=True)
    await transport.publish("p16/data/qos0", b"q", qos=0)
    got = [await anext(messages), await anext(messages)]
    result["before"] = [[m.topic, m.payload.decode(), m.retain] for m in got]
    print(json.dumps({"phase": "connected"}), flush=True)

    # The test restarts the broker, then writes a line.
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    await transport.publish("p16/data/after", b"a", timeout=60)
    got = await anext(messages)
    result["after"] = [got.topic, got.payload.decode(), got.retain]
    await asyncio.wait_for(again.wait(), 60)
    result["connects"] = len(connects)
    await transport.stop()
    await transport.stop()
    print(json.dumps(result), flush=True)

asyncio.run(asyncio.wait_for(main(), 100))
"""


@pytest.fixture(scope="session")
def paho16_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The python of a venv with the system packages and paho-mqtt 1.6.1 on top, built once."""
    venv = tmp_path_factory.mktemp("paho16") / "venv"
    subprocess.run(
        [sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True, capture_output=True
    )
    python = venv / "bin" / "python"
    install = subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", f"paho-mqtt=={PAHO_VERSION}"],
        capture_output=True,
        text=True,
    )
    if install.returncode != 0:
        pytest.fail(
            f"cannot pip-install paho-mqtt=={PAHO_VERSION} into a venv (is the package index "
            f"reachable?): {(install.stderr or install.stdout).strip()[-1500:]}",
            pytrace=False,
        )
    version = subprocess.run(
        [str(python), "-c", "import paho.mqtt; print(paho.mqtt.__version__)"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert version == PAHO_VERSION, f"the venv imports paho-mqtt {version}, not {PAHO_VERSION}"
    return python


def test_transport_works_with_paho_1_6(paho16_python: Path, tmp_path: Path):
    script = tmp_path / "paho16_check.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    port = free_port()
    with (
        run_mosquitto_at(tmp_path / "auth", free_port(), users={"agent": "s3cret"}) as auth_broker,
        run_mosquitto_at(tmp_path / "first", port) as broker,
    ):
        proc = subprocess.Popen(
            [str(paho16_python), str(script), broker.url, auth_broker.url],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        try:
            first = proc.stdout.readline()  # type: ignore[union-attr]
            if not first:
                _, err = proc.communicate(timeout=GUARD_S)
                pytest.fail(f"the paho 1.6 script ended early: {err[-3000:]}", pytrace=False)
            assert json.loads(first) == {"phase": "connected"}
        except BaseException:
            proc.kill()
            proc.wait()
            raise
    # The broker is gone (no persistence); a new one takes its port.
    with run_mosquitto_at(tmp_path / "second", port):
        try:
            out, err = proc.communicate("restarted\n", timeout=GUARD_S)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert proc.returncode == 0, err[-3000:]
    result = json.loads(out.strip().splitlines()[-1])

    assert result["paho"] == PAHO_VERSION
    assert result["has_callback_api"] is False
    assert "refused the connection" in result["refused"]
    refusal = result["refused"].lower()  # Mosquitto answers a wrong password with "not authorised"
    assert "not authorised" in refusal or "user name or password" in refusal
    assert result["authenticated"] is True
    assert result["before"] == [["p16/data/retained", "r", False], ["p16/data/qos0", "q", False]]
    assert result["after"] == ["p16/data/after", "a", False]
    assert result["connects"] == 2
