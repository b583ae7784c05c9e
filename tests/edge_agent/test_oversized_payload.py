"""A 50 MB payload on an open broker costs the agent about the payload itself, not a parse: it is
refused by its size before any decoding, and recorded. Measured on a real agent process (its own
peak RSS, VmHWM) against a real Mosquitto with default limits, which lets 50 MB through."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from modules.signing import public_key_pem
from tests._services import Service, free_port
from tests.edge_agent._fleet import publish, wait_for

pytestmark = [pytest.mark.services, pytest.mark.timeout(120)]

ROOT = Path(__file__).resolve().parents[2]
PAYLOAD_BYTES = 50 * 1024 * 1024


def _peak_rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


def _status(port: int) -> dict | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/status", timeout=2) as resp:
            return json.loads(resp.read())
    except OSError:
        return None


async def test_a_50_mb_payload_is_refused_unread_and_costs_about_its_own_size(
    tmp_path: Path, mosquitto: Service
) -> None:
    fleet = "big" + os.urandom(3).hex()
    trust = tmp_path / "publisher.pem"
    trust.write_text(public_key_pem(Ed25519PrivateKey.generate()))
    status_port = free_port()
    argv = [
        sys.executable, "-m", "modules.cli", "agent", "run", "--device-id", "dev-big", "--fleet", fleet,
        "--hub", mosquitto.url, "--registry", "http://127.0.0.1:9", "--trust", str(trust),
        "--data-dir", str(tmp_path / "agent"), "--status-port", str(status_port),
        "--listen-host", "127.0.0.1",
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELFLEET_")}
    log = (tmp_path / "agent.log").open("wb")
    agent = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    try:
        await wait_for(lambda: _status(status_port), timeout=60, what="agent up")
        time.sleep(1.0)  # connected and subscribed, imports settled
        before = _peak_rss_bytes(agent.pid)
        topic = f"modelfleet/{fleet}/deployments/huge"
        publish(mosquitto.port, topic, b"[" * PAYLOAD_BYTES)
        refused = await wait_for(
            lambda: [r for r in (_status(status_port) or {}).get("refused", []) if r["topic"] == topic],
            timeout=60,
            what="the payload refused",
        )
        assert "above the limit" in refused[0]["reason"]
        grown = _peak_rss_bytes(agent.pid) - before
        # The MQTT client has to receive the packet; nothing else may copy or parse it.
        assert grown <= PAYLOAD_BYTES // 4, f"peak RSS grew by {grown / 2**20:.0f} MiB"
        print(f"peak RSS grew by {grown / 2**20:.0f} MiB for a {PAYLOAD_BYTES / 2**20:.0f} MiB payload")
        # and deep nesting or a huge integer within the size limit are recorded refusals too
        publish(mosquitto.port, f"modelfleet/{fleet}/deployments/deep", b"[" * 10_000 + b"]" * 10_000)
        publish(
            mosquitto.port, f"modelfleet/{fleet}/deployments/digits", b'{"version": ' + b"9" * 5000 + b"}"
        )
        reasons = await wait_for(
            lambda: (
                r
                if len(
                    r := {x["topic"].rsplit("/", 1)[1]: x["reason"] for x in _status(status_port)["refused"]}
                )
                >= 3
                else None
            ),
            timeout=30,
            what="all refused",
        )
        assert "nesting" in reasons["deep"] and "5000 digits" in reasons["digits"]
        assert agent.poll() is None
    finally:
        agent.send_signal(signal.SIGTERM)
        try:
            agent.wait(timeout=30)
        except subprocess.TimeoutExpired:
            agent.kill()
        log.close()
