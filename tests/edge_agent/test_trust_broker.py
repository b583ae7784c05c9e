"""The agent's trust rules over a real Mosquitto: an attacker who can write any topic of an open
broker clears retained documents and keys, re-publishes an override on the fleet topic and
replays a captured method request; the running agent changes nothing it should not, also after
a restart. The module runtime is the in-memory fake (no registry, no processes): what is under
test is the real transport and the agent's decisions."""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path

import pytest

from edge_agent import Agent
from modules.deployment import DeploymentDocument
from modules.device_state import MethodResponse, ReportedState
from modules.service_keys import ServiceKeys
from tests._services import Service
from tests.deployment._factories import document, manifest, modelfleet_module
from tests.edge_agent._fakes import FakeRuntime
from tests.edge_agent._fleet import mqtt_client, publish, wait_for
from tests.edge_agent.test_reconcile import DIGEST_1, DIGEST_2, _config, _doc, _wire
from tests.edge_agent.test_trust import _keys_wire, _request, _tombstone

pytestmark = [pytest.mark.services, pytest.mark.timeout(60)]


def _refused(agent: Agent, text: str) -> bool:
    return any(text in r.reason for r in agent.refused)


async def _start(tmp_path: Path, mosquitto: Service, fleet: str) -> tuple[Agent, FakeRuntime]:
    config = _config(tmp_path).model_copy(
        update={"hub": f"mqtt://127.0.0.1:{mosquitto.port}", "fleet": fleet}
    )
    runtime = FakeRuntime()
    agent = Agent(config, runtime=runtime)
    await agent.start()
    await wait_for(lambda: agent.transport.connected, 20, "agent connected")
    return agent, runtime


def _answer(port: int, topic: str, request_topic: str, payload: bytes) -> MethodResponse:
    got: list[bytes] = []
    client = mqtt_client(f"caller-{os.urandom(3).hex()}")
    client.on_message = lambda _c, _u, msg: got.append(msg.payload)
    client.connect("127.0.0.1", port)
    client.subscribe(topic, qos=1)
    client.loop_start()
    try:
        time.sleep(0.3)
        client.publish(request_topic, payload, qos=1).wait_for_publish(5)
        deadline = time.monotonic() + 10
        while not got and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        client.loop_stop()
        client.disconnect()
    assert got, "no answer"
    return MethodResponse.model_validate_json(got[0])


async def test_clears_overrides_on_the_fleet_topic_and_replays_change_nothing(
    tmp_path: Path, mosquitto: Service
) -> None:
    fleet = "trust" + os.urandom(3).hex()

    def doc(version: int, digest: str) -> DeploymentDocument:
        return _doc(version, {"iris": digest}).model_copy(update={"fleet": fleet})

    agent, runtime = await _start(tmp_path, mosquitto, fleet)
    topics = agent.topics
    try:
        publish(mosquitto.port, topics.deployment("iris-prod"), _wire(doc(1, DIGEST_1)))
        await wait_for(lambda: "iris" in runtime.records, 20, "module started")

        # an unsigned clear of the retained document: nothing changes
        publish(mosquitto.port, topics.deployment("iris-prod"), b"")
        await wait_for(lambda: _refused(agent, "without a signed delete"), 20, "clear noticed")
        assert runtime.records["iris"].digest == DIGEST_1
        assert agent.deployments["iris-prod"].outcome == "applied"

        # an override re-published on the fleet topic is refused
        override = document(
            name="pin",
            version=7,
            fleet=fleet,
            device="dev-1",
            content=manifest({"iris": modelfleet_module("modules/iris", DIGEST_2)}),
        )
        publish(mosquitto.port, topics.deployment("pin"), _wire(override))
        await wait_for(lambda: _refused(agent, "fleet topic"), 20, "override refused")
        assert runtime.records["iris"].digest == DIGEST_1
        # on the device's own topic it applies; an unsigned clear of it changes nothing
        publish(mosquitto.port, topics.desired("dev-1"), _wire(override))
        await wait_for(lambda: runtime.records["iris"].digest == DIGEST_2, 20, "override applied")
        publish(mosquitto.port, topics.desired("dev-1"), b"")
        await wait_for(
            lambda: any(
                r.topic == topics.desired("dev-1") and "without a signed delete" in r.reason
                for r in agent.refused
            ),
            20,
            "override clear noticed",
        )
        assert runtime.records["iris"].digest == DIGEST_2
        publish(mosquitto.port, topics.desired("dev-1"), _tombstone("pin", 8, device="dev-1", fleet=fleet))
        await wait_for(
            lambda: runtime.records["iris"].digest == DIGEST_1, 20, "override deleted by a signed delete"
        )

        # scoring keys: a clear keeps them, an older document replayed after it is refused
        keys_topic = topics.keys("dev-1", "iris-prod")
        new_keys = ServiceKeys.generate()

        old = _keys_wire(agent, 1, ServiceKeys.generate(), fleet)
        publish(mosquitto.port, keys_topic, old)
        publish(mosquitto.port, keys_topic, _keys_wire(agent, 2, new_keys, fleet))
        await wait_for(lambda: agent.keys.keys_for("iris-prod") == new_keys, 20, "keys v2")
        publish(mosquitto.port, keys_topic, b"")
        await wait_for(lambda: _refused(agent, "keys cleared"), 20, "keys clear noticed")
        publish(mosquitto.port, keys_topic, old)
        await wait_for(lambda: _refused(agent, "replayed keys"), 20, "old keys refused")
        assert agent.keys.keys_for("iris-prod") == new_keys

        # a captured method request replayed
        request = _request("restartModule", "cap1", ttl_s=60, fleet=fleet, module="iris")
        response_topic = topics.method_response("dev-1", "cap1")
        request_topic = topics.method_request("dev-1", "restartModule", "cap1")
        first = await asyncio.to_thread(_answer, mosquitto.port, response_topic, request_topic, request)
        assert first.status == 200 and runtime.restarted == ["iris"]
        again = await asyncio.to_thread(_answer, mosquitto.port, response_topic, request_topic, request)
        assert again.status == 409 and runtime.restarted == ["iris"]
    finally:
        await agent.stop()

    # after a restart: the retained old keys document is still refused, the module still wanted
    agent, runtime = await _start(tmp_path, mosquitto, fleet)
    try:
        publish(mosquitto.port, topics.keys("dev-1", "iris-prod"), old)
        await wait_for(lambda: _refused(agent, "replayed keys"), 20, "old keys refused after restart")
        assert agent.keys.keys_for("iris-prod") == new_keys
        await wait_for(lambda: "iris" in runtime.records, 20, "module wanted after restart")

        # a signed delete removes the module, and the report says so
        publish(mosquitto.port, topics.deployment("iris-prod"), _tombstone("iris-prod", 2, fleet=fleet))
        await wait_for(lambda: "iris" not in runtime.records, 20, "module removed")
        await wait_for(
            lambda: (
                agent.deployments.get("iris-prod") and agent.deployments["iris-prod"].outcome == "removed"
            ),
            20,
            "removed",
        )
        report = ReportedState.model_validate(json.loads(agent.reported_state().model_dump_json()))
        assert "iris" not in report.modules
    finally:
        await agent.stop()
