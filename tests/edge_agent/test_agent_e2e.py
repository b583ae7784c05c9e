"""The agent end to end against real Mosquitto and Distribution, with real module processes."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import threading
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
import pytest

from edge_agent._agent import Agent
from modules.device_state import MethodRequest, ReportedState, sign_method_request
from publisher import Module
from tests._services import Service, free_port
from tests.edge_agent._fleet import (
    EXAMPLES,
    SAMPLE,
    SCRIPTS,
    Publisher,
    agent_config,
    mqtt_client,
    read_retained,
    running_with,
    wait_for,
)

SCORE_V1 = EXAMPLES / "iris-service" / "score.py"


@pytest.fixture
def fleet_name(request: pytest.FixtureRequest) -> str:
    return "t" + str(abs(hash(request.node.name)) % 10**8)


@pytest.fixture
def publisher(tmp_path: Path, distribution: Service, mosquitto: Service, fleet_name: str) -> Publisher:
    return Publisher(tmp_path / "publisher", distribution.url, mosquitto.port, fleet_name)


@pytest.fixture
async def agent(
    tmp_path: Path, distribution: Service, mosquitto: Service, publisher: Publisher, fleet_name: str
) -> AsyncIterator[Agent]:
    config = agent_config(
        tmp_path / "agent", "dev-1", mosquitto.url, distribution.url, publisher.public_key, fleet_name,
        tags={"site": "a"},
    )  # fmt: skip
    agent = Agent(config)
    await agent.start()
    try:
        yield agent
    finally:
        await agent.stop()


async def _score(port: int, session: aiohttp.ClientSession) -> dict:
    async with session.post(f"http://127.0.0.1:{port}/score", data=json.dumps(SAMPLE)) as resp:
        assert resp.status == 200, await resp.text()
        return await resp.json()


async def test_signed_deployment_serves_predictions_and_reports_running_with_digest(
    agent: Agent, publisher: Publisher, mosquitto: Service
) -> None:
    module = await publisher.package(SCORE_V1)
    port = free_port()
    await publisher.deploy(publisher.document("iris", 1, module, port, target="tags.site = 'a'"))
    await wait_for(lambda: running_with(agent, module.digest), what="module running")
    async with aiohttp.ClientSession() as session:
        answer = await _score(port, session)
    assert answer["predictions"] == ["setosa", "versicolor", "virginica"]

    async def reported() -> ReportedState | None:
        raw = await asyncio.to_thread(read_retained, mosquitto.port, publisher.topics.reported("dev-1"))
        return ReportedState.model_validate_json(raw) if raw else None

    for _ in range(50):
        state = await reported()
        if state and state.modules.get("scorer") and state.modules["scorer"].status == "running":
            break
        await asyncio.sleep(0.1)
    assert state is not None
    scorer = state.modules["scorer"]
    assert (scorer.status, scorer.digest, scorer.version, scorer.port) == ("running", module.digest, 1, port)
    assert state.deployments["iris"].outcome == "applied"
    # inference counts and latency come from the module's own metrics, once per heartbeat
    counted = await wait_for(
        lambda: agent.modules["scorer"] if agent.modules["scorer"].inference_count >= 1 else None,
        what="counts",
    )
    assert counted.inference_errors == 0 and counted.latency_ms_avg is not None and counted.latency_ms_avg > 0


async def test_update_under_steady_load_has_zero_failed_requests(agent: Agent, publisher: Publisher) -> None:
    v1 = await publisher.package(SCORE_V1)
    port = free_port()
    await publisher.deploy(publisher.document("iris", 1, v1, port))
    await wait_for(lambda: running_with(agent, v1.digest), what="v1 running")
    v2 = await publisher.package(SCRIPTS / "score_v2.py")

    results: list[int | str] = []
    versions: list[int | None] = []
    stop = asyncio.Event()

    async def client(session: aiohttp.ClientSession) -> None:
        while not stop.is_set():
            try:
                async with session.post(f"http://127.0.0.1:{port}/score", data=json.dumps(SAMPLE)) as resp:
                    results.append(resp.status)
                    if resp.status == 200:
                        versions.append((await resp.json()).get("version"))
            except aiohttp.ClientError as exc:
                results.append(type(exc).__name__)

    async with aiohttp.ClientSession() as session:
        clients = [asyncio.create_task(client(session)) for _ in range(4)]
        await asyncio.sleep(0.5)
        await publisher.deploy(publisher.document("iris", 2, v2, port))
        await wait_for(lambda: running_with(agent, v2.digest), what="v2 running")
        await asyncio.sleep(0.5)
        stop.set()
        await asyncio.gather(*clients)
    failures = [r for r in results if r != 200]
    assert failures == [], f"{len(failures)} of {len(results)} requests failed: {failures[:5]}"
    assert versions[0] is None and versions[-1] == 2  # served by v1, then by v2
    assert len(results) > 50


async def test_init_crash_keeps_previous_version_and_reports_failed_with_reason(
    agent: Agent, publisher: Publisher
) -> None:
    good = await publisher.package(SCORE_V1)
    port = free_port()
    await publisher.deploy(publisher.document("iris", 1, good, port))
    await wait_for(lambda: running_with(agent, good.digest), what="v1 running")
    pid = agent.modules["scorer"].pid
    bad = await publisher.package(SCRIPTS / "failing_init.py")
    await publisher.deploy(publisher.document("iris", 2, bad, port))
    state = await wait_for(
        lambda: (
            agent.deployments.get("iris")
            if agent.deployments.get("iris", None) and agent.deployments["iris"].version == 2
            else None
        ),
        what="deployment v2 outcome",
    )
    assert state.outcome == "failed"
    assert "model file is corrupt: cannot load weights" in (state.reason or "")
    scorer = agent.modules["scorer"]
    assert (scorer.status, scorer.digest, scorer.pid) == ("running", good.digest, pid)
    assert "cannot load weights" in (scorer.last_error or "")
    async with aiohttp.ClientSession() as session:
        assert (await _score(port, session))["predictions"][0] == "setosa"
    reported = agent.reported_state()
    assert reported.deployments["iris"].outcome == "failed"


async def test_restart_policy_backoff_is_observable(agent: Agent, publisher: Publisher) -> None:
    crashy: Module = await publisher.package(SCRIPTS / "crash_after_start.py")
    await publisher.deploy(publisher.document("crashy", 1, crashy, free_port(), restart_policy="on-failure"))
    seen: set[str] = set()

    def restarted_twice() -> bool:
        state = agent.modules.get("scorer")
        if state is None:
            return False
        seen.add(state.status)
        return state.restart_count >= 2

    await wait_for(restarted_twice, what="two restarts")
    assert "backoff" in seen
    assert agent.modules["scorer"].exit_code in (3, None)


async def test_unsigned_wrongly_signed_replayed_and_malformed_documents_are_refused_and_module_untouched(
    agent: Agent, publisher: Publisher, tmp_path: Path
) -> None:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from modules.deployment import sign_document

    module = await publisher.package(SCORE_V1)
    port = free_port()
    await publisher.deploy(publisher.document("iris", 3, module, port))
    await wait_for(lambda: running_with(agent, module.digest), what="module running")
    pid = agent.modules["scorer"].pid
    other = await publisher.package(SCRIPTS / "score_v2.py")

    unsigned = json.dumps(publisher.document("iris", 4, other, port).to_json_dict()).encode()
    stranger = Ed25519PrivateKey.generate()
    wrongly_signed = json.dumps(
        sign_document(publisher.document("iris", 5, other, port), stranger).to_json_dict()
    ).encode()
    tampered = publisher.signed(publisher.document("iris", 6, module, port)).replace(
        module.digest.encode(), other.digest.encode()
    )
    replayed = publisher.signed(publisher.document("iris", 2, other, port))
    malformed = b'{"fleet": "x", "name": '
    cases = [
        (unsigned, "not signed"),
        (wrongly_signed, "not trusted"),
        (tampered, "signature"),
        (replayed, "replayed"),
        (malformed, "malformed"),
    ]
    for payload, reason in cases:
        await publisher.publish_raw("iris", payload)
        await wait_for(
            lambda reason=reason: agent.refused and reason in agent.refused[0].reason,
            what=f"refusal: {reason}",
        )
    reported = agent.reported_state()
    assert [r.reason for r in reported.refused][: len(cases)]
    assert all(any(reason in r.reason for r in reported.refused) for _, reason in cases)
    scorer = agent.modules["scorer"]
    assert (scorer.status, scorer.digest, scorer.pid) == ("running", module.digest, pid)
    assert agent.persisted.last_versions["iris"] == 3
    async with aiohttp.ClientSession() as session:
        assert "version" not in await _score(port, session)


async def test_corrupted_blob_on_disk_is_detected_and_fetched_again(
    agent: Agent, publisher: Publisher
) -> None:
    module = await publisher.package(SCORE_V1)
    port = free_port()
    await publisher.deploy(publisher.document("iris", 1, module, port))
    await wait_for(lambda: running_with(agent, module.digest), what="module running")
    model_digest = publisher.model.files[0].digest
    blob = agent.store.blob_path(model_digest)
    original = blob.read_bytes()
    blob.chmod(0o644)
    blob.write_bytes(b"\x00" * 64 + original[64:])
    # a new document for the same module (only the environment changes) makes the agent re-check it
    await publisher.deploy(publisher.document("iris", 2, module, port, env={"LOG_LEVEL": {"value": "debug"}}))
    await wait_for(
        lambda: agent.deployments.get("iris") and agent.deployments["iris"].version == 2, what="v2"
    )
    await wait_for(
        lambda: running_with(agent, module.digest) and agent.deployments["iris"].outcome == "applied",
        what="module running again and v2 applied",
    )
    assert agent.store.blob_path(model_digest).read_bytes() == original
    async with aiohttp.ClientSession() as session:
        assert (await _score(port, session))["predictions"][1] == "versicolor"


async def test_not_enough_disk_is_reported_and_old_version_keeps_serving(
    agent: Agent, publisher: Publisher
) -> None:
    v1 = await publisher.package(SCORE_V1)
    port = free_port()
    await publisher.deploy(publisher.document("iris", 1, v1, port))
    await wait_for(lambda: running_with(agent, v1.digest), what="v1 running")
    agent.store.reserve_bytes = 1 << 60  # no disk can leave this much free
    v2 = await publisher.package(SCRIPTS / "score_v2.py")
    await publisher.deploy(publisher.document("iris", 2, v2, port))
    state = await wait_for(
        lambda: (
            agent.deployments.get("iris")
            if agent.deployments.get("iris")
            and agent.deployments["iris"].version == 2
            and agent.deployments["iris"].reason
            else None
        ),
        what="v2 outcome",
    )
    # not enough disk is transient: reported as applying, with the reason and the next attempt
    assert state.outcome == "applying" and "disk" in (state.reason or "").lower(), state.reason
    assert "retrying at" in (state.reason or "")
    assert running_with(agent, v1.digest)
    async with aiohttp.ClientSession() as session:
        assert "version" not in await _score(port, session)
    # space is freed: the retry applies v2 with no new document
    agent.store.reserve_bytes = 0
    await wait_for(
        lambda: running_with(agent, v2.digest) and agent.deployments["iris"].outcome == "applied",
        timeout=60,
        what="v2 applied by a retry",
    )
    assert agent.modules["scorer"].last_error is None


def _call_method(port: int, topics, device: str, method: str, payload: dict, key) -> dict:  # type: ignore[no-untyped-def]

    request_id = os.urandom(4).hex()
    answer: list[bytes] = []
    done = threading.Event()
    client = mqtt_client(f"caller-{request_id}")

    def on_message(_c, _u, msg):  # type: ignore[no-untyped-def]
        answer.append(msg.payload)
        done.set()

    client.on_message = on_message
    client.connect("127.0.0.1", port)
    client.subscribe(topics.method_response(device, request_id), qos=1)
    client.loop_start()
    try:
        time.sleep(0.2)
        request = MethodRequest(
            fleet=topics.fleet,
            device=device,
            method=method,
            request_id=request_id,
            expires_at=datetime.now(UTC) + timedelta(seconds=60),
            payload=payload,
        )
        body = json.dumps(sign_method_request(request, key)).encode()
        client.publish(topics.method_request(device, method, request_id), body, qos=1).wait_for_publish(5)
        assert done.wait(30), f"no answer to {method}"
    finally:
        client.loop_stop()
        client.disconnect()
    return json.loads(answer[0])


async def test_direct_methods_ping_state_logs_and_restart(
    agent: Agent, publisher: Publisher, mosquitto: Service
) -> None:
    module = await publisher.package(SCORE_V1)
    port = free_port()
    await publisher.deploy(publisher.document("iris", 1, module, port))
    await wait_for(lambda: running_with(agent, module.digest), what="module running")
    pid = agent.modules["scorer"].pid

    def call(method: str, payload: dict | None = None) -> dict:
        return _call_method(mosquitto.port, publisher.topics, "dev-1", method, payload or {}, publisher.key)

    pong = await asyncio.to_thread(call, "ping")
    assert pong["status"] == 200 and pong["payload"]["pong"] is True
    state = await asyncio.to_thread(call, "getState")
    assert state["payload"]["modules"]["scorer"]["digest"] == module.digest
    logs = await asyncio.to_thread(call, "getLogs", {"module": "scorer", "tail": 50})
    assert logs["status"] == 200 and any("init() completed" in line for line in logs["payload"]["lines"])
    missing = await asyncio.to_thread(call, "getLogs", {"module": "nope"})
    assert missing["status"] == 404
    restarted = await asyncio.to_thread(call, "restartModule", {"module": "scorer"})
    assert restarted["status"] == 200
    await wait_for(
        lambda: running_with(agent, module.digest) and agent.modules["scorer"].pid != pid, what="new pid"
    )
    assert (await asyncio.to_thread(call, "selfDestruct"))["status"] == 404
    async with aiohttp.ClientSession() as session:
        assert (await _score(port, session))["predictions"][2] == "virginica"


@pytest.mark.parametrize("module_limits", ["auto", "rlimit"])
async def test_a_module_past_its_memory_limit_is_reported_out_of_memory_while_its_neighbour_serves(
    tmp_path: Path, distribution: Service, mosquitto: Service, publisher: Publisher, fleet_name: str,
    module_limits: str,
) -> None:  # fmt: skip
    """`settings.resources.memory_mb` from a signed deployment, enforced by whatever the agent's
    `module_limits` picks on this machine, and the module's reported `limits` says which."""
    from tests.edge_agent.test_runtime_supervisor import HOG_SCRIPT, _kernel_memory_here

    hog_script = tmp_path / "hog" / "score.py"
    hog_script.parent.mkdir()
    hog_script.write_text(HOG_SCRIPT)
    hog = await publisher.package(hog_script)
    calm = await publisher.package(SCORE_V1)
    hog_port, calm_port = free_port(), free_port()
    doc = publisher.document("limits", 1, hog, hog_port, restart_policy="never")
    desired = doc.model_dump(mode="json", by_alias=True, exclude_none=True)
    modules = desired["content"]["modulesContent"]["$edgeAgent"]["properties.desired"]["modules"]
    modules["scorer"]["settings"]["resources"] = {"memory_mb": 200}
    modules["calm"] = {
        "type": "modelfleet", "status": "running", "restartPolicy": "always",
        "settings": {"module": calm.repository, "digest": calm.digest, "port": calm_port},
    }  # fmt: skip
    config = agent_config(
        tmp_path / "agent", "dev-1", mosquitto.url, distribution.url, publisher.public_key, fleet_name,
        module_limits=module_limits,
    )  # fmt: skip
    agent = Agent(config)
    await agent.start()
    try:
        await publisher.deploy(type(doc).model_validate(desired))
        await wait_for(lambda: running_with(agent, hog.digest), what="the limited module running")
        await wait_for(lambda: running_with(agent, calm.digest, "calm"), what="its neighbour running")
        expected = _kernel_memory_here() if module_limits == "auto" else None
        mechanism = expected or "resident-memory watch, RLIMIT_DATA backstop"
        assert agent.modules["scorer"].limits == f"memory 200 MiB ({mechanism})"
        async with aiohttp.ClientSession() as session:
            url = f"http://127.0.0.1:{hog_port}/score"
            async with session.post(url, json={"allocate_mb": 50}) as resp:
                assert resp.status == 200  # within its limit
            with contextlib.suppress(aiohttp.ClientError):
                async with session.post(url, json={"allocate_mb": 400}) as resp:
                    await resp.read()
            await wait_for(lambda: agent.modules["scorer"].status == "failed", what="out of memory reported")
            assert "out of memory" in (agent.modules["scorer"].last_error or "")
            assert running_with(agent, calm.digest, "calm")
            assert (await _score(calm_port, session))["predictions"] == ["setosa", "versicolor", "virginica"]
    finally:
        await agent.stop()


async def test_a_taken_public_port_fails_the_module_before_it_is_started(
    agent: Agent, publisher: Publisher
) -> None:
    """The front proxy binds first: a port something else holds fails the module with the reason,
    before its artifact is pulled or its process started for nothing."""
    module = await publisher.package(SCORE_V1)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        await publisher.deploy(publisher.document("iris", 1, module, port))
        state = await wait_for(lambda: agent.deployments.get("iris"), what="the deployment's outcome")
        await wait_for(lambda: agent.deployments["iris"].outcome == "failed", what="failed")
    assert f"cannot listen on port {port}" in (agent.deployments["iris"].reason or ""), state
    scorer = agent.modules["scorer"]
    assert scorer.status == "failed" and scorer.pid is None
    assert "scorer" not in agent.runtime.serving()
    stored = agent.config.data_dir / "store" / "modules" / module.digest.removeprefix("sha256:")
    assert not stored.exists()  # never pulled
