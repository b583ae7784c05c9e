"""What the agent trusts, with a fake transport and runtime: only signed deletions delete, version
floors hold per document identity and across restarts, overrides stay on their own topic, the
device's env policy holds, and direct methods are signed, fresh and answered once."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge_agent import Agent
from edge_agent._planner import Remove
from modules.deployment import Tombstone
from modules.device_state import MethodRequest, MethodResponse, sign_method_request
from modules.service_keys import ServiceKeys, seal_keys
from modules.transport import Message
from tests.deployment._factories import document, manifest, modelfleet_module
from tests.edge_agent._fakes import FakeRuntime, FakeTransport
from tests.edge_agent.test_reconcile import DIGEST_1, DIGEST_2, KEY, TOPICS, _config, _doc, _receive, _wire

pytestmark = pytest.mark.timeout(10)


def _agent(tmp_path: Path, runtime: FakeRuntime | None = None) -> tuple[Agent, FakeTransport, FakeRuntime]:
    transport, runtime = FakeTransport(), runtime or FakeRuntime()
    return Agent(_config(tmp_path), transport=transport, runtime=runtime), transport, runtime


def _tombstone(
    name: str, version: int, *, device: str | None = None, of: str = "deployment", fleet: str = "factory"
) -> bytes:
    deleted_at = datetime.now(UTC)
    return _wire(
        Tombstone(fleet=fleet, name=name, version=version, device=device, of=of, deleted_at=deleted_at)
    )


async def test_an_unsigned_clear_changes_nothing_and_a_signed_delete_removes(tmp_path: Path) -> None:
    agent, _, runtime = _agent(tmp_path)
    topic = TOPICS.deployment("iris-prod")
    await _receive(agent, topic, _wire(_doc(1, {"iris": DIGEST_1})))
    await _receive(agent, topic, b"")
    assert len(runtime.commands) == 1 and "iris" in runtime.records
    report = agent.reported_state()
    assert report.deployments["iris-prod"].outcome == "applied"
    assert "without a signed delete" in report.refused[0].reason
    await _receive(agent, topic, _tombstone("iris-prod", 2))
    assert isinstance(runtime.commands[-1], Remove) and runtime.records == {}
    # the deletion is a floor: the captured version 1 cannot come back
    await _receive(agent, topic, _wire(_doc(1, {"iris": DIGEST_1})))
    assert runtime.records == {} and "replayed" in agent.reported_state().refused[0].reason


async def test_an_override_re_published_on_the_fleet_topic_is_refused(tmp_path: Path) -> None:
    agent, _, runtime = _agent(tmp_path)
    override = document(
        name="press-1-pin",
        version=5,
        device="dev-1",
        content=manifest({"iris": modelfleet_module("modules/iris", DIGEST_2)}),
    )
    await _receive(agent, TOPICS.deployment("press-1-pin"), _wire(override))
    assert runtime.commands == []
    assert "fleet topic" in agent.reported_state().refused[0].reason
    await _receive(agent, TOPICS.desired("dev-1"), _wire(override))
    assert runtime.records["iris"].digest == DIGEST_2
    # and its deletion is signed for the device's scope
    await _receive(agent, TOPICS.desired("dev-1"), b"")
    assert "iris" in runtime.records
    await _receive(agent, TOPICS.desired("dev-1"), _tombstone("press-1-pin", 6, device="dev-1"))
    assert runtime.records == {}


async def test_a_denied_env_name_refuses_the_document(tmp_path: Path) -> None:
    agent, _, runtime = _agent(tmp_path)
    module = modelfleet_module("modules/iris", DIGEST_1)
    module["env"] = {"LD_PRELOAD": {"value": "/tmp/evil.so"}}
    await _receive(
        agent,
        TOPICS.deployment("iris-prod"),
        _wire(document(name="iris-prod", version=1, content=manifest({"iris": module}))),
    )
    assert runtime.commands == []
    reason = agent.reported_state().refused[0].reason
    assert "LD_PRELOAD" in reason and "policy" in reason


async def test_an_oversized_payload_is_a_recorded_refusal(tmp_path: Path) -> None:
    agent, _, runtime = _agent(tmp_path)
    await _receive(agent, TOPICS.deployment("iris-prod"), b"{" + b" " * (2 << 20) + b"}")
    assert runtime.commands == []
    assert "above the limit" in agent.reported_state().refused[0].reason


def _keys_wire(agent: Agent, version: int, keys: ServiceKeys, fleet: str = "factory") -> bytes:
    sealed = seal_keys(
        keys,
        agent.device_key.public,
        fleet=fleet,
        name="iris-prod",
        device="dev-1",
        version=version,
        signing_key=KEY,
    )
    return json.dumps(sealed).encode()


async def test_keys_survive_a_clear_and_an_old_document_stays_refused_across_restarts(tmp_path: Path) -> None:
    agent, _, _ = _agent(tmp_path)
    topic = TOPICS.keys("dev-1", "iris-prod")
    old_keys, new_keys = ServiceKeys.generate(), ServiceKeys.generate()
    old_wire = _keys_wire(agent, 1, old_keys)
    await agent.on_message(Message(topic, old_wire, True))
    await agent.on_message(Message(topic, _keys_wire(agent, 2, new_keys), True))
    assert agent.keys.keys_for("iris-prod") == new_keys
    await agent.on_message(Message(topic, b"", True))
    assert agent.keys.keys_for("iris-prod") == new_keys
    await agent.on_message(Message(topic, old_wire, True))
    assert agent.keys.keys_for("iris-prod") == new_keys
    assert "replayed" in agent.reported_state().refused[0].reason

    again, _, _ = _agent(tmp_path)
    again._load_state()  # what start() does first
    assert again.keys.keys_for("iris-prod") == new_keys
    await again.on_message(Message(topic, old_wire, True))
    assert again.keys.keys_for("iris-prod") == new_keys
    # a signed deletion withdraws them, and is a floor too
    await again.on_message(Message(topic, _tombstone("iris-prod", 3, device="dev-1", of="keys"), True))
    assert again.keys.keys_for("iris-prod") is None
    await again.on_message(Message(topic, _keys_wire(again, 2, new_keys), True))
    assert again.keys.keys_for("iris-prod") is None


def _request(
    method: str,
    rid: str,
    *,
    key: Ed25519PrivateKey = KEY,
    ttl_s: float = 30,
    fleet: str = "factory",
    **payload,
) -> bytes:
    request = MethodRequest(
        fleet=fleet,
        device="dev-1",
        method=method,
        request_id=rid,
        expires_at=datetime.now(UTC) + timedelta(seconds=ttl_s),
        payload=payload,
    )
    return json.dumps(sign_method_request(request, key)).encode()


async def _call(
    agent: Agent, transport: FakeTransport, method: str, rid: str, payload: bytes
) -> MethodResponse:
    await agent.on_message(Message(TOPICS.method_request("dev-1", method, rid), payload, False))
    answer = transport.last(TOPICS.method_response("dev-1", rid))
    assert answer is not None, "every request is answered on the fixed response topic"
    return MethodResponse.model_validate_json(answer)


async def test_direct_methods_are_signed_fresh_and_answered_once(tmp_path: Path) -> None:
    agent, transport, runtime = _agent(tmp_path)
    await transport.start()
    await _receive(agent, TOPICS.deployment("iris-prod"), _wire(_doc(1, {"iris": DIGEST_1})))
    wire = _request("restartModule", "r1", module="iris")
    assert (await _call(agent, transport, "restartModule", "r1", wire)).status == 200
    assert runtime.restarted == ["iris"]
    replay = await _call(agent, transport, "restartModule", "r1", wire)
    assert replay.status == 409 and runtime.restarted == ["iris"]
    expired = await _call(agent, transport, "ping", "r2", _request("ping", "r2", ttl_s=-1))
    assert expired.status == 403 and "expired" in expired.payload["error"]
    forged = await _call(
        agent, transport, "ping", "r3", _request("ping", "r3", key=Ed25519PrivateKey.generate())
    )
    assert forged.status == 403 and "not trusted" in forged.payload["error"]
    unsigned = json.dumps({"payload": {}, "response_topic": "elsewhere"}).encode()
    assert (await _call(agent, transport, "ping", "r4", unsigned)).status == 403
    moved = await _call(agent, transport, "getLogs", "r5", _request("ping", "r5"))
    assert moved.status == 403 and "another" in moved.payload["error"]
    assert not any(topic == "elsewhere" for topic, _, _ in transport.published)
    # the replay guard survives a restart
    again, transport2, _ = _agent(tmp_path)
    again._load_state()  # what start() does first
    await transport2.start()
    assert (await _call(again, transport2, "restartModule", "r1", wire)).status == 409
