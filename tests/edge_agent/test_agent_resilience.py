"""The agent survives its surroundings: a broker restart, and its own `kill -9`."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import aiohttp

from edge_agent._agent import Agent
from modules.deployment import DeploymentDocument
from modules.device_state import Presence, ReportedState
from modules.service_keys import ServiceKeys, device_public_key, load_or_create_device_key, seal_keys
from tests._services import Service, free_port, run_mosquitto_at
from tests.edge_agent._fleet import (
    EXAMPLES,
    SAMPLE,
    Publisher,
    agent_config,
    publish,
    read_retained,
    running_with,
    wait_for,
)

ROOT = Path(__file__).resolve().parents[2]


async def test_broker_restart_reconnects_resubscribes_and_reports_again(
    tmp_path: Path, distribution: Service
) -> None:
    port = free_port()
    fleet = "restart"
    with run_mosquitto_at(tmp_path / "broker-1", port) as broker:
        publisher = await asyncio.to_thread(Publisher, tmp_path / "pub", distribution.url, port, fleet)
        agent = Agent(
            agent_config(
                tmp_path / "agent", "dev-r", broker.url, distribution.url, publisher.public_key, fleet
            )
        )
        await agent.start()
        try:
            module = await publisher.package(EXAMPLES / "iris-service" / "score.py")
            module_port = free_port()
            await publisher.deploy(publisher.document("iris", 1, module, module_port))
            await wait_for(lambda: running_with(agent, module.digest), what="module running")
            assert agent.transport is not None
        except BaseException:
            await agent.stop()
            raise
    try:
        await wait_for(lambda: not agent.transport.connected, what="disconnect")  # type: ignore[union-attr]
        # the device keeps serving while the broker is gone
        async with (
            aiohttp.ClientSession() as session,
            session.post(f"http://127.0.0.1:{module_port}/score", data=json.dumps(SAMPLE)) as resp,
        ):
            assert resp.status == 200
        with run_mosquitto_at(tmp_path / "broker-2", port):  # a fresh broker: no retained messages at all
            await wait_for(lambda: agent.transport.connected, timeout=60, what="reconnect")  # type: ignore[union-attr]

            def reported() -> ReportedState | None:
                raw = read_retained(port, publisher.topics.reported("dev-r"), timeout=1)
                return ReportedState.model_validate_json(raw) if raw else None

            state = None
            for _ in range(100):
                state = await asyncio.to_thread(reported)
                if state is not None:
                    break
            assert state is not None, "state was not re-reported to the new broker"
            assert (
                state.modules["scorer"].status == "running"
                and state.modules["scorer"].digest == module.digest
            )
            presence = await asyncio.to_thread(read_retained, port, publisher.topics.status("dev-r"))
            assert presence is not None and Presence.model_validate_json(presence).online
            # resubscribed: a document published on the new broker is applied
            v2 = await publisher.package(ROOT / "tests" / "edge_agent" / "scripts" / "score_v2.py")
            await publisher.deploy(publisher.document("iris", 2, v2, module_port))
            await wait_for(lambda: running_with(agent, v2.digest), what="v2 applied after the restart")
    finally:
        await agent.stop()


def _scoring_processes(instance_marker: str) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if "modules.scoring" in cmdline and instance_marker in cmdline:
            pids.append(int(entry.name))
    return pids


def _status(port: int) -> dict | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/status", timeout=2) as resp:
            return json.loads(resp.read())
    except OSError:
        return None


def _persisted(data_dir: Path, module: str) -> dict | None:
    try:
        return json.loads((data_dir / "state.json").read_text())["modules"].get(module)
    except (OSError, ValueError, KeyError):
        return None


async def test_agent_killed_with_sigkill_readopts_its_module_without_a_second_copy(
    tmp_path: Path, distribution: Service, mosquitto: Service
) -> None:
    fleet = "sigkill"
    publisher = await asyncio.to_thread(Publisher, tmp_path / "pub", distribution.url, mosquitto.port, fleet)
    module = await publisher.package(ROOT / "tests" / "edge_agent" / "scripts" / "chatty.py")
    module_port, status_port = free_port(), free_port()
    data_dir = tmp_path / "agent"
    argv = [
        sys.executable, "-m", "modules.cli", "agent", "run", "--device-id", "dev-k", "--fleet", fleet,
        "--hub", mosquitto.url, "--registry", distribution.url, "--trust", str(publisher.public_key),
        "--data-dir", str(data_dir), "--status-port", str(status_port), "--listen-host", "127.0.0.1",
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELFLEET_")}
    log = (tmp_path / "agent.log").open("wb")
    first = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    second = None
    try:
        await publisher.deploy(publisher.document("iris", 1, module, module_port))

        def module_running() -> dict | None:
            state = _status(status_port)
            scorer = (state or {}).get("modules", {}).get("scorer")
            return (
                state
                if scorer and scorer["status"] == "running" and scorer["digest"] == module.digest
                else None
            )

        before = await wait_for(
            lambda: module_running(), timeout=90, what="module running under the first agent"
        )
        pid = before["modules"]["scorer"]["pid"]
        # the state file is written a moment after the state is reported (writes are coalesced)
        record = await wait_for(
            lambda: _persisted(data_dir, "scorer"), timeout=30, what="the instance record on disk"
        )
        marker = record["instance_id"]
        assert _scoring_processes(marker) == [pid]

        first.send_signal(signal.SIGKILL)
        first.wait(timeout=10)
        assert _scoring_processes(marker) == [pid]  # the module outlives the agent
        # and keeps answering on its own port: a print() in run() has no pipe to break
        internal = f"http://127.0.0.1:{record['internal_port']}/score"
        async with (
            aiohttp.ClientSession() as session,
            session.post(internal, data=json.dumps(SAMPLE)) as resp,
        ):
            assert resp.status == 200, await resp.text()

        second = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
        # re-adopted and judged: the first reconcile pass of the new agent reports the deployment
        after = await wait_for(
            lambda: (
                (state := module_running())
                and (state.get("deployments") or {}).get("iris", {}).get("outcome") == "applied"
                and state
            ),
            timeout=90,
            what="module running and its deployment applied under the second agent",
        )
        assert after["modules"]["scorer"]["pid"] == pid
        assert _scoring_processes(marker) == [pid]
        assert after["deployments"]["iris"]["outcome"] == "applied"
        # what it printed while no agent was there reaches the module's log
        logs = data_dir / "runtime" / "logs" / "scorer.log"
        await wait_for(
            lambda: logs.exists() and "scored 3 rows" in logs.read_text(), timeout=10, what="log line"
        )
        async with (
            aiohttp.ClientSession() as session,
            session.post(f"http://127.0.0.1:{module_port}/score", data=json.dumps(SAMPLE)) as resp,
        ):
            assert resp.status == 200
            assert (await resp.json())["predictions"][0] == "setosa"
        second.send_signal(signal.SIGTERM)
        assert second.wait(timeout=30) == 0
        await wait_for(
            lambda: not _scoring_processes(marker), timeout=10, what="module stopped with the agent"
        )
    finally:
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                proc.kill()
        for leftover in _scoring_processes(str(data_dir)):
            os.kill(leftover, signal.SIGKILL)
        log.close()


async def test_an_auth_module_readopted_after_sigkill_still_requires_its_key_and_no_key_is_on_disk(
    tmp_path: Path, distribution: Service, mosquitto: Service
) -> None:
    fleet = "sigkill-auth"
    publisher = await asyncio.to_thread(Publisher, tmp_path / "pub", distribution.url, mosquitto.port, fleet)
    module = await publisher.package(EXAMPLES / "iris-service" / "score.py")
    module_port, status_port = free_port(), free_port()
    data_dir = tmp_path / "agent"
    argv = [
        sys.executable, "-m", "modules.cli", "agent", "run", "--device-id", "dev-a", "--fleet", fleet,
        "--hub", mosquitto.url, "--registry", distribution.url, "--trust", str(publisher.public_key),
        "--data-dir", str(data_dir), "--status-port", str(status_port), "--listen-host", "127.0.0.1",
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELFLEET_")}
    data_dir.mkdir(parents=True)
    device_public = device_public_key(load_or_create_device_key(data_dir / "device-x25519.pem"))
    keys = ServiceKeys.generate()
    primary = keys.primary.get_secret_value()
    sealed = seal_keys(
        keys, device_public, fleet=fleet, name="secure", device="dev-a", version=1, signing_key=publisher.key
    )
    doc = publisher.document("secure", 1, module, module_port).to_json_dict()
    doc["content"]["modulesContent"]["$edgeAgent"]["properties.desired"]["modules"]["scorer"]["settings"][
        "auth"
    ] = True
    log = (tmp_path / "agent.log").open("wb")
    first = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    second = None

    async def score(key: str | None) -> int:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        async with (
            aiohttp.ClientSession() as session,
            session.post(
                f"http://127.0.0.1:{module_port}/score", data=json.dumps(SAMPLE), headers=headers
            ) as resp,
        ):
            return resp.status

    def serving() -> dict | None:
        scorer = ((_status(status_port) or {}).get("modules") or {}).get("scorer")
        return scorer if scorer and scorer["status"] == "running" else None

    try:
        await publisher.deploy(DeploymentDocument.model_validate(doc))
        await wait_for(
            lambda: ((_status(status_port) or {}).get("modules") or {}).get("scorer"), what="auth module seen"
        )
        assert serving() is None, "an auth module must not serve before its keys arrive"
        await asyncio.to_thread(
            publish, mosquitto.port, publisher.topics.keys("dev-a", "secure"), json.dumps(sealed).encode()
        )
        before = await wait_for(serving, timeout=90, what="auth module running")
        assert await score(None) == 401 and await score(primary) == 200

        first.send_signal(signal.SIGKILL)
        first.wait(timeout=10)
        second = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
        after = await wait_for(
            lambda: (s := serving()) and _status(status_port)["deployments"].get("secure") and s,
            timeout=90,
            what="re-adopted",
        )
        assert after["pid"] == before["pid"]
        assert await score(None) == 401 and await score(primary) == 200
        # restarted by the re-adopting agent: the new process requires the key too
        restarted = signal.SIGKILL
        os.kill(before["pid"], restarted)
        await wait_for(lambda: (s := serving()) and s["pid"] != before["pid"], timeout=90, what="restarted")
        assert await score(None) == 401 and await score(primary) == 200
        # the keys are nowhere on disk in clear
        for path in data_dir.rglob("*"):
            if path.is_file() and not path.is_symlink():
                assert primary.encode() not in path.read_bytes(), f"scoring key in clear in {path}"
    finally:
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
        for leftover in _scoring_processes(str(data_dir)):
            os.kill(leftover, signal.SIGKILL)
        log.close()
