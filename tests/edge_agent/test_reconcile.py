"""The reconcile path (intake -> selection -> plan -> runner -> status book) with a fake transport
and a fake runtime: no broker, no registry, no processes. Each test runs in well under a second."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge_agent import Agent, AgentConfig
from edge_agent._planner import Remove, Replace, Start
from edge_agent._runtime import ModuleStartError
from edge_agent._state import PersistedState, StateFile
from modules.deployment import DeploymentDocument, Tombstone, sign_document
from modules.device_state import MethodRequest, ReportedState, sign_method_request
from modules.signing import public_key_pem
from modules.topics import FleetTopics
from modules.transport import Message
from tests.deployment._factories import document, manifest, modelfleet_module
from tests.edge_agent._fakes import FakeRuntime, FakeTransport

pytestmark = pytest.mark.timeout(10)

KEY = Ed25519PrivateKey.generate()
TOPICS = FleetTopics("factory")
DIGEST_1 = "sha256:" + "11" * 32
DIGEST_2 = "sha256:" + "22" * 32


def _config(tmp_path: Path) -> AgentConfig:
    trust = tmp_path / "publisher.pem"
    trust.write_text(public_key_pem(KEY))
    return AgentConfig(
        device_id="dev-1",
        fleet="factory",
        tags={"site": "plant-1"},
        trust=[trust],
        data_dir=tmp_path / "agent",
        status_port=0,
        heartbeat_s=3600,
    )


def _doc(version: int, modules: dict[str, str], name: str = "iris-prod") -> DeploymentDocument:
    content = manifest({m: modelfleet_module(f"modules/{m}", digest) for m, digest in modules.items()})
    return document(name=name, version=version, content=content)


def _wire(doc: DeploymentDocument | Tombstone, key: Ed25519PrivateKey = KEY) -> bytes:
    return json.dumps(sign_document(doc, key).to_json_dict()).encode()


@pytest.fixture
def parts(tmp_path: Path) -> tuple[Agent, FakeTransport, FakeRuntime]:
    transport, runtime = FakeTransport(), FakeRuntime()
    return Agent(_config(tmp_path), transport=transport, runtime=runtime), transport, runtime


async def _receive(agent: Agent, topic: str, payload: bytes) -> None:
    await agent.on_message(Message(topic, payload, True))
    await agent.reconcile()


async def test_a_signed_document_starts_its_modules_and_is_reported_applied(parts) -> None:
    agent, _, runtime = parts
    await _receive(agent, TOPICS.deployment("iris-prod"), _wire(_doc(1, {"iris": DIGEST_1})))
    assert [type(c) for c in runtime.commands] == [Start]
    report = agent.reported_state()
    assert report.deployments["iris-prod"].outcome == "applied"
    assert report.modules["iris"].status == "running" and report.modules["iris"].digest == DIGEST_1
    saved = StateFile(agent.config.data_dir / "state.json").load()
    assert saved.modules["iris"].desired.digest == DIGEST_1
    assert saved.last_versions["iris-prod"] == 1
    assert runtime.pruned[-1] == {DIGEST_1}


async def test_applying_the_same_document_twice_does_nothing(parts) -> None:
    agent, _, runtime = parts
    wire = _wire(_doc(1, {"iris": DIGEST_1}))
    await _receive(agent, TOPICS.deployment("iris-prod"), wire)
    await _receive(agent, TOPICS.deployment("iris-prod"), wire)
    await agent.reconcile()
    assert len(runtime.commands) == 1


async def test_a_new_version_replaces_the_module(parts) -> None:
    agent, _, runtime = parts
    await _receive(agent, TOPICS.deployment("iris-prod"), _wire(_doc(1, {"iris": DIGEST_1})))
    await _receive(agent, TOPICS.deployment("iris-prod"), _wire(_doc(2, {"iris": DIGEST_2})))
    assert [type(c) for c in runtime.commands] == [Start, Replace]
    assert agent.reported_state().deployments["iris-prod"].version == 2
    assert agent.modules["iris"].digest == DIGEST_2


async def test_a_failed_update_stays_failed_while_the_old_version_serves(parts) -> None:
    agent, _, runtime = parts
    await _receive(agent, TOPICS.deployment("iris-prod"), _wire(_doc(1, {"iris": DIGEST_1})))
    runtime.fail["iris"] = ModuleStartError("init() raised ValueError")
    await _receive(agent, TOPICS.deployment("iris-prod"), _wire(_doc(2, {"iris": DIGEST_2})))
    state = agent.reported_state()
    assert state.deployments["iris-prod"].outcome == "failed"
    assert "init() raised ValueError" in (state.deployments["iris-prod"].reason or "")
    assert state.modules["iris"].digest == DIGEST_1 and state.modules["iris"].status == "running"
    assert agent.persisted.modules["iris"].digest == DIGEST_1
    # another pass neither retries the failed configuration nor calls it applied
    commands = len(runtime.commands)
    await agent.reconcile()
    assert len(runtime.commands) == commands
    assert agent.reported_state().deployments["iris-prod"].outcome == "failed"


async def test_one_broken_module_does_not_stop_the_others(parts) -> None:
    agent, _, runtime = parts
    runtime.fail["alpha"] = OSError(28, "No space left on device")
    await _receive(
        agent, TOPICS.deployment("iris-prod"), _wire(_doc(1, {"alpha": DIGEST_1, "beta": DIGEST_2}))
    )
    assert {c.name for c in runtime.commands} == {"alpha", "beta"}
    state = agent.reported_state()
    assert state.modules["beta"].status == "running"
    assert state.modules["alpha"].status == "failed"
    assert "No space left on device" in (state.modules["alpha"].last_error or "")
    assert state.deployments["iris-prod"].outcome == "failed"


async def test_a_deleted_deployment_removes_its_modules(parts) -> None:
    agent, _, runtime = parts
    await _receive(agent, TOPICS.deployment("iris-prod"), _wire(_doc(1, {"iris": DIGEST_1})))
    tombstone = Tombstone(fleet="factory", name="iris-prod", version=2, deleted_at=datetime.now(UTC))
    await _receive(agent, TOPICS.deployment("iris-prod"), _wire(tombstone))
    assert isinstance(runtime.commands[-1], Remove)
    state = agent.reported_state()
    assert "iris" not in state.modules
    assert state.deployments["iris-prod"].outcome == "removed"
    assert agent.persisted.modules == {}


async def test_a_refused_document_changes_nothing_and_is_reported(parts) -> None:
    agent, _, runtime = parts
    forged = _wire(_doc(1, {"iris": DIGEST_1}), key=Ed25519PrivateKey.generate())
    await _receive(agent, TOPICS.deployment("iris-prod"), forged)
    assert runtime.commands == []
    refusal = agent.reported_state().refused[0]
    assert refusal.topic == TOPICS.deployment("iris-prod") and "not trusted" in refusal.reason


async def test_a_module_type_the_runtime_cannot_run_is_reported_failed(parts) -> None:
    agent, _, runtime = parts
    docker = {"type": "docker", "status": "running", "settings": {"image": "example/app:1"}}
    doc = document(name="edge", version=1, content=manifest({"app": docker}))
    await _receive(agent, TOPICS.deployment("edge"), _wire(doc))
    assert runtime.commands == []
    deployment = agent.reported_state().deployments["edge"]
    assert deployment.outcome == "failed" and "docker" in (deployment.reason or "")


async def test_a_restarted_agent_readopts_what_it_ran(tmp_path: Path) -> None:
    first = FakeRuntime()
    agent = Agent(_config(tmp_path), transport=FakeTransport(), runtime=first)
    await _receive(agent, TOPICS.deployment("iris-prod"), _wire(_doc(1, {"iris": DIGEST_1})))
    second = FakeRuntime()
    again = Agent(_config(tmp_path), transport=FakeTransport(), runtime=second)
    await again.start()
    try:
        assert [r.desired for r in second.readopted] == [first.records["iris"].desired]
        await asyncio.wait_for(again.reconciled.wait(), 5)
        assert second.commands == []  # what runs is what is wanted
    finally:
        await again.stop()


def test_a_schema_1_state_file_loads(tmp_path: Path) -> None:
    old = {
        "schema_version": 1,
        "last_versions": {"iris-prod": 3},
        "modules": {
            "iris": {
                "module": "iris",
                "deployment": "iris-prod",
                "instance_id": "iris-1",
                "pid": 123,
                "internal_port": 40001,
                "public_port": 5001,
                "repository": "modules/iris",
                "digest": DIGEST_1,
                "fingerprint": "0123456789abcdef",
                "restart_policy": "always",
                "env": {"A": "1"},
            }
        },
        "failed": {"beta": "feedfeedfeedfeed"},
        "failed_reasons": {"beta": "init() raised"},
    }
    path = tmp_path / "state.json"
    path.write_text(json.dumps(old))
    state = StateFile(path).load()
    assert isinstance(state, PersistedState)
    record = state.modules["iris"]
    assert (record.module, record.digest, record.public_port, record.pid) == ("iris", DIGEST_1, 5001, 123)
    assert dict(record.desired.env) == {"A": "1"}
    assert state.failures["beta"].reason == "init() raised"
    assert state.failures["beta"].fingerprint == "feedfeedfeedfeed"


async def test_the_wired_agent_reports_answers_methods_and_goes_offline(parts) -> None:
    agent, transport, _ = parts
    await agent.start()
    try:
        assert TOPICS.all_deployments in transport.subscriptions
        agent.reconciled.clear()
        transport.inject(TOPICS.deployment("iris-prod"), _wire(_doc(1, {"iris": DIGEST_1})))
        await asyncio.wait_for(agent.reconciled.wait(), 5)

        async def reported() -> ReportedState:
            while True:
                payload = transport.last(TOPICS.reported("dev-1"))
                if payload:
                    state = ReportedState.model_validate_json(payload)
                    if "iris-prod" in state.deployments:
                        return state
                await asyncio.sleep(0.02)

        state = await asyncio.wait_for(reported(), 5)
        assert state.deployments["iris-prod"].outcome == "applied"
        request = MethodRequest(
            fleet="factory",
            device="dev-1",
            method="getLogs",
            request_id="r1",
            expires_at=datetime.now(UTC) + timedelta(seconds=30),
            payload={"module": "iris", "tail": 2},
        )
        wire = json.dumps(sign_method_request(request, KEY)).encode()
        transport.inject(TOPICS.method_request("dev-1", "getLogs", "r1"), wire, retain=False)

        async def answered() -> bytes:
            while (payload := transport.last(TOPICS.method_response("dev-1", "r1"))) is None:
                await asyncio.sleep(0.02)
            return payload

        answer = json.loads(await asyncio.wait_for(answered(), 5))
        assert answer["status"] == 200 and answer["payload"]["lines"] == ["iris line 0", "iris line 1"]
    finally:
        await agent.stop()
    status = json.loads(transport.last(TOPICS.status("dev-1")) or b"{}")
    assert status["online"] is False
