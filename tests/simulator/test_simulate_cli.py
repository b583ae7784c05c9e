"""`modelfleet simulate`: a fleet in its own process that other clients of the broker act on."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from modules.deployment import sign_document
from modules.device_state import ReportedState
from modules.mqtt import MqttSettings, MqttTransport
from modules.topics import FleetTopics
from tests._services import Service
from tests.simulator._documents import KEY, document, trust_file

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.timeout(120)


@pytest.mark.services
async def test_a_simulated_fleet_in_its_own_process_applies_what_is_published(
    tmp_path: Path, mosquitto: Service
) -> None:
    fleet = f"simcli{os.urandom(3).hex()}"
    topics = FleetTopics(fleet)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "modules.cli", "simulate", "--devices", "4", "--hub", mosquitto.url,
        "--fleet", fleet, "--trust", str(trust_file(tmp_path)), "--fail-start", "scorer:50",
        "--spread", "site=a,b", "--json", "--progress", "0.5",
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT,
    )  # fmt: skip
    reports: dict[str, ReportedState] = {}
    observer = MqttTransport(MqttSettings(url=mosquitto.url, client_id=f"test-{fleet}"))
    observer.subscribe(topics.all_reported)

    async def watch() -> None:
        async for message in observer.messages():
            if message.payload:
                report = ReportedState.model_validate_json(message.payload)
                reports[report.device_id] = report

    async def until(predicate, what: str) -> None:  # type: ignore[no-untyped-def]
        for _ in range(600):
            if predicate():
                return
            await asyncio.sleep(0.1)
        raise AssertionError(f"timed out waiting for {what}")

    watcher = asyncio.create_task(watch())
    try:
        await observer.start()
        await until(lambda: len(reports) == 4, "four simulated devices reporting")
        assert {r.tags["site"] for r in reports.values()} == {"a", "b"}
        signed = sign_document(document(1, fleet=fleet), KEY)
        await observer.publish(
            topics.deployment("iris"), json.dumps(signed.to_json_dict()).encode(), retain=True
        )

        def settled() -> bool:
            seen = [r.deployments.get("iris") for r in reports.values()]
            return all(s is not None and s.outcome in ("applied", "failed") for s in seen)

        await until(settled, "every device to settle on the deployment")
        outcomes = sorted((d, r.deployments["iris"].outcome) for d, r in reports.items())
        assert outcomes == [
            ("sim-0000", "applied"), ("sim-0001", "failed"), ("sim-0002", "applied"), ("sim-0003", "failed")
        ]  # fmt: skip
    finally:
        watcher.cancel()
        await observer.stop()
        if proc.returncode is None:
            proc.send_signal(signal.SIGINT)
        out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    summary = json.loads(out)
    assert sorted(summary["devices"]) == ["sim-0000", "sim-0001", "sim-0002", "sim-0003"]
    assert all(d["online"] for d in summary["devices"].values())
    assert b"4/4 devices online" in err


def test_an_in_memory_hub_is_refused_with_one_line(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "modules.cli", "simulate", "--devices", "2", "--hub", "memory",
         "--trust", str(trust_file(tmp_path))],
        capture_output=True, text=True, cwd=ROOT, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "modelfleet: error: --hub must be a real broker (other commands cannot reach an in-memory one)"
    ]


@pytest.mark.services
async def test_sim_run_with_a_fleet_file_and_a_fault_records_the_timeline_and_plots_it(
    tmp_path: Path, mosquitto: Service
) -> None:
    fleet = f"simrun{os.urandom(3).hex()}"
    topics = FleetTopics(fleet)
    (tmp_path / "fleet.yaml").write_text(
        f"count: 6\nfleet: {fleet}\nids: 'cam-{{i:02d}}'\n"
        "tags:\n  gpu: {share: 50, value: true, otherwise: false}\n"
    )
    plot = tmp_path / "timeline.png"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "modules.cli", "sim", "run", "--fleet-file", str(tmp_path / "fleet.yaml"),
        "--hub", mosquitto.url, "--trust", str(trust_file(tmp_path)), "--no-links",
        "--fault", "do=fail-start,module=scorer,gpu=true", "--plot", str(plot), "--json", "--progress", "0.3",
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT,
    )  # fmt: skip
    publisher = MqttTransport(MqttSettings(url=mosquitto.url, client_id=f"test-{fleet}"))
    publisher.subscribe(topics.all_reported)
    seen: dict[str, str] = {}

    async def watch() -> None:
        async for message in publisher.messages():
            if message.payload:
                report = ReportedState.model_validate_json(message.payload)
                if "iris" in report.deployments:
                    seen[report.device_id] = report.deployments["iris"].outcome

    watcher = asyncio.create_task(watch())
    try:
        await publisher.start()
        signed = sign_document(document(1, fleet=fleet), KEY)
        for _ in range(300):  # the devices start with the retained document, or get it live
            await asyncio.sleep(0.1)
            if _ == 20:
                await publisher.publish(
                    topics.deployment("iris"), json.dumps(signed.to_json_dict()).encode(), retain=True
                )
            if len(seen) == 6 and set(seen.values()) <= {"applied", "failed"}:
                break
        assert sorted(seen.items()) == [
            ("cam-00", "applied"), ("cam-01", "failed"), ("cam-02", "applied"),
            ("cam-03", "failed"), ("cam-04", "applied"), ("cam-05", "failed"),
        ]  # fmt: skip
        await asyncio.sleep(1.0)  # a timeline sample after the last change
    finally:
        watcher.cancel()
        await publisher.stop()
        if proc.returncode is None:
            proc.send_signal(signal.SIGINT)
        out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    summary = json.loads(out)["timeline"]
    assert (
        summary["deployment"] == "iris"
        and summary["final"]["healthy"] == 3
        and summary["final"]["failed"] == 3
    )
    assert summary["failures_by_reason"] == {
        "scorer: module scorer did not start: init() raised RuntimeError (simulated)": 3
    }
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert b"fail-start scorer [gpu=True] (3 devices)" in err


@pytest.mark.services
def test_sim_run_warns_past_the_embedded_hubs_limit_and_simulate_is_the_same_command(
    tmp_path: Path, mosquitto: Service
) -> None:
    def run(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "modules.cli", *argv, "--hub", mosquitto.url, "--no-links",
             "--fleet", f"simwarn{os.urandom(3).hex()}", "--trust", str(trust_file(tmp_path)),
             "--duration", "0.2"],
            capture_output=True, text=True, cwd=ROOT, timeout=120,
        )  # fmt: skip

    past = run("sim", "run", "--devices", "101")
    assert past.returncode == 0, past.stderr
    assert "past what its broker handles (about 100, docs/hub.md)" in past.stderr
    assert "simulating 101 devices" in past.stderr
    within = run("simulate", "--devices", "3")
    assert within.returncode == 0, within.stderr
    assert "warning" not in within.stderr and "simulating 3 devices" in within.stderr


def test_real_devices_need_a_registry(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "modules.cli", "sim", "run", "--devices", "3", "--real", "1",
         "--hub", "mqtt://127.0.0.1:1", "--trust", str(trust_file(tmp_path))],
        capture_output=True, text=True, cwd=ROOT, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "modelfleet: error: --real needs --registry URL (where the real devices pull modules from)"
    ]


@pytest.mark.services
def test_a_restart_broker_step_runs_the_broker_restart_command(tmp_path: Path, mosquitto: Service) -> None:
    marker = tmp_path / "restarted"
    proc = subprocess.run(
        [sys.executable, "-m", "modules.cli", "sim", "run", "--devices", "2", "--hub", mosquitto.url,
         "--fleet", f"simrb{os.urandom(3).hex()}", "--trust", str(trust_file(tmp_path)),
         "--fault", "do=restart-broker,at=0", "--broker-restart-command", f"touch {marker}",
         "--duration", "1"],
        capture_output=True, text=True, cwd=ROOT, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert marker.exists()
    assert "restart-broker (2 devices)" in proc.stderr
    # without the command, the step says what it needs
    proc = subprocess.run(
        [sys.executable, "-m", "modules.cli", "sim", "run", "--devices", "2", "--hub", mosquitto.url,
         "--fleet", f"simrb{os.urandom(3).hex()}", "--trust", str(trust_file(tmp_path)),
         "--fault", "do=restart-broker,at=0", "--duration", "1"],
        capture_output=True, text=True, cwd=ROOT, timeout=120,
    )  # fmt: skip
    assert proc.returncode != 0
    assert "restarting a real broker needs a hook" in proc.stderr
