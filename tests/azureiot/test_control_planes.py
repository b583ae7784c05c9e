"""One agent, two control planes: the same scenarios over Azure IoT Hub and over MQTT.

The agent runs as `modelfleet agent run` in a venv holding `modelfleet[cpu,azure]`, so with the
real `azure-iot-device` 2.14 and paho-mqtt 1.6 (`_sdk_env.py`), inside a private network
namespace (`_harness.py`). Over IoT Hub it connects with TLS to Mosquitto on 8883 with a test CA
and a `localhost` certificate, where `standin_hub.py` plays the hub's twin and methods; over MQTT
the same stand-in plays the publisher on modelfleet's own topics. The module comes from the real
Distribution registry outside the namespace, through a Unix-socket relay.

The scenarios, over IoT Hub with a symmetric key, with X.509, and over MQTT: a signed deployment
is applied and its module runs healthy, as the control plane shows it (reported properties / the
retained report); a wrongly signed document is refused and the refusal reported; `getLogs`,
`restartModule`, `getState` and `ping` as direct methods; telemetry (D2C messages / the telemetry
topic); the broker restarts and the agent recovers by itself: a new deployment version is applied
and methods are answered again. Then, on IoT Hub only: the initial twin and a missed patch, and
the publisher's CLI through the hub's REST API to the agent.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from modules.device_state import MethodRequest, sign_method_request
from modules.signing import load_signing_key
from tests._services import Service
from tests.azureiot._harness import MQTT_PORT, REGISTRY_PORT, HubSide, agent_process, poll, private_network
from tests.azureiot._sdk_env import sdk_python
from tests.edge_agent._fleet import EXAMPLES, Publisher
from tests.publisher._harness import acli

SCORE = EXAMPLES / "iris-service" / "score.py"
DEVICE = "press-07"
MODULE_PORT = 5001  # inside the namespace


@pytest.fixture(scope="module")
def sdk_env() -> Path:
    return sdk_python()


def _agent_settings(root: Path, publisher: Publisher, fleet: str) -> dict[str, Any]:
    return {
        "device_id": DEVICE,
        "fleet": fleet,
        "registry": f"http://127.0.0.1:{REGISTRY_PORT}",
        "trust": [str(publisher.public_key)],
        "data_dir": str(root / "data"),
        "listen_host": "127.0.0.1",
        "status_port": 0,
        "heartbeat_s": 1.0,
        "backoff_base_s": 0.2,
        "backoff_max_s": 2.0,
        "retry_base_s": 0.5,
        "retry_max_s": 2.0,
    }


def _method(publisher: Publisher, fleet: str, method: str, payload: dict[str, Any]) -> dict[str, Any]:
    request = MethodRequest(
        fleet=fleet,
        device=DEVICE,
        method=method,
        request_id=os.urandom(6).hex(),
        expires_at=datetime.now(UTC) + timedelta(seconds=60),
        payload=payload,
    )
    return sign_method_request(request, load_signing_key(publisher.ws.signing_key_path))


@contextlib.asynccontextmanager
async def agent_on(
    transport: str,
    root: Path,
    distribution: Service,
    sdk_env: Path,
    publisher: Publisher,
    before_start: Callable[[HubSide], Awaitable[None]] | None = None,
) -> AsyncIterator[tuple[HubSide, Callable[[], str]]]:
    """A private network with the hub side of `transport` in it (iothub-sas, iothub-x509 or
    mqtt) and an agent process connected to it; yields the hub side and a function giving the logs."""
    mode = transport.partition("-")[0]
    settings = _agent_settings(root / "agent", publisher, publisher.topics.fleet)
    env: dict[str, str] = {}
    with private_network() as ns:
        x509 = transport == "iothub-x509"
        async with HubSide(
            ns, root / "hub", mode, DEVICE, publisher.topics.fleet, distribution.port, x509=x509
        ) as hub:
            if mode == "iothub":
                hub_url = "azureiot://localhost"
                settings["iothub_ca_file"] = str(hub.ca_file)
            if transport == "iothub-sas":
                key = base64.b64encode(os.urandom(32)).decode()
                env["MODELFLEET_IOTHUB_CONNECTION_STRING"] = (
                    f"HostName=localhost;DeviceId={DEVICE};SharedAccessKey={key}"
                )
            elif x509:
                cert, cert_key = hub.device_certificate()
                settings["iothub_x509_cert_file"] = str(cert)
                settings["iothub_x509_key_file"] = str(cert_key)
            else:
                hub_url = f"mqtt://127.0.0.1:{MQTT_PORT}"
            if before_start is not None:
                await before_start(hub)
            async with agent_process(ns, sdk_env, root / "agent", hub_url, settings, env) as agent_log:
                yield hub, lambda: f"--- agent\n{agent_log()}\n{hub.logs()}"


@pytest.mark.parametrize("transport", ["iothub-sas", "iothub-x509", "mqtt"])
async def test_same_agent_same_scenarios_over_iot_hub_and_mqtt(
    transport: str, tmp_path: Path, distribution: Service, sdk_env: Path
) -> None:
    mode = transport.partition("-")[0]
    fleet = f"az{os.urandom(3).hex()}"
    publisher = await asyncio.to_thread(Publisher, tmp_path / "publisher", distribution.url, 0, fleet)
    module = await publisher.package(SCORE)
    async with agent_on(transport, tmp_path, distribution, sdk_env, publisher) as (hub, logs):

        async def reported() -> dict[str, Any]:
            return await hub.reported() or {}

        # A signed deployment: applied, the module running and healthy, as reported.
        doc = publisher.document("iris", 1, module, MODULE_PORT)
        await hub.put_document("deployments", "iris", publisher.signed(doc))

        async def applied(version: int) -> dict[str, Any] | None:
            state = await reported()
            iris = state.get("deployments", {}).get("iris", {})
            scorer = state.get("modules", {}).get("scorer", {})
            if (iris.get("version"), iris.get("outcome")) == (version, "applied") and (
                scorer.get("status"),
                scorer.get("health"),
            ) == ("running", "healthy"):
                return state
            return None

        state = await poll(lambda: applied(1), "iris v1 applied, scorer running and healthy", logs)
        assert state["modules"]["scorer"]["digest"] == module.digest
        assert state["device_id"] == DEVICE and state["fleet"] == fleet

        # A wrongly signed document: refused, the refusal reported, the module untouched.
        tampered = publisher.signed(publisher.document("shadow", 1, module, MODULE_PORT + 1)).replace(
            str(MODULE_PORT + 1).encode(), str(MODULE_PORT + 2).encode()
        )
        await hub.put_document("deployments", "shadow", tampered)

        async def refused() -> dict[str, Any] | None:
            state = await reported()
            hits = [r for r in state.get("refused", []) if r.get("deployment") == "shadow"]
            return hits[0] if hits else None

        refusal = await poll(refused, "the tampered document refused", logs)
        assert "signature" in refusal["reason"]
        state = await reported()
        assert "shadow" not in state.get("modules", {})
        assert state["modules"]["scorer"]["status"] == "running"

        # Direct methods, signed by the publisher.
        pid = (await reported())["modules"]["scorer"]["pid"]
        answer = await hub.invoke("getLogs", _method(publisher, fleet, "getLogs", {"module": "scorer"}))
        assert answer["status"] == 200, answer
        assert isinstance(answer["payload"]["lines"], list) and answer["payload"]["module"] == "scorer"
        answer = await hub.invoke(
            "restartModule", _method(publisher, fleet, "restartModule", {"module": "scorer"})
        )
        assert answer == {"status": 200, "payload": {"module": "scorer", "restarted": True}}

        async def restarted() -> bool:
            scorer = (await reported()).get("modules", {}).get("scorer", {})
            return scorer.get("pid") not in (None, pid) and scorer.get("status") == "running"

        await poll(restarted, "the restarted module reported with its new process", logs)
        answer = await hub.invoke("getState", _method(publisher, fleet, "getState", {}))
        assert answer["status"] == 200 and answer["payload"]["device_id"] == DEVICE
        # the whole state, not the twin's summary (which has the providers as one string)
        assert isinstance(answer["payload"]["device"]["execution_providers"], list)
        unsigned = {**_method(publisher, fleet, "ping", {}), "signature": None}
        answer = await hub.invoke("ping", unsigned)
        assert answer["status"] == 403, answer

        # Telemetry.
        async def telemetry() -> Any:
            seen = [t for t in await hub.telemetry() if "scorer" in t.get("modules", {})]
            return seen[-1] if seen else None

        sample = await poll(telemetry, "telemetry naming the module", logs)
        assert sample["device_id"] == DEVICE

        # The broker restarts (no persistence); the agent recovers by itself: it answers
        # methods again (subscribed anew), then a new version arrives as a desired patch.
        hub.broker.stop()
        hub.broker.start()
        await hub.wait_ready()

        async def answers_again() -> bool:
            ping = await hub.invoke("ping", _method(publisher, fleet, "ping", {}), timeout=1)
            return ping["status"] == 200

        await poll(answers_again, "a ping answered after the broker restart", logs)
        doc2 = publisher.document("iris", 2, module, MODULE_PORT)
        await hub.put_document("deployments", "iris", publisher.signed(doc2))
        await poll(lambda: applied(2), "iris v2 applied after the broker restart", logs)
        answer = await hub.invoke("ping", _method(publisher, fleet, "ping", {}))
        assert answer["status"] == 200 and answer["payload"]["deviceId"] == DEVICE, answer

        if mode == "iothub":
            twin = await hub.twin()
            section = twin["properties"]["reported"]["modelfleet"]
            assert section["presence"]["online"] is True
            # the documents sit in the twin as the signed text, exactly
            stored = twin["properties"]["desired"]["modelfleet"]["deployments"]["iris"]
            assert json.loads(stored) == json.loads(publisher.signed(doc2))


async def test_the_initial_twin_and_a_missed_patch_reach_the_agent(
    tmp_path: Path, distribution: Service, sdk_env: Path
) -> None:
    """A document already in the twin when the agent first connects is applied (the handler is
    registered after the twin was read, not before); a patch the device never got is caught up
    when the next one's `$version` skips it. Documents that target no one keep the agent from
    running anything: the outcome `not-targeted` is the proof it judged them."""
    fleet = f"az{os.urandom(3).hex()}"
    publisher = await asyncio.to_thread(Publisher, tmp_path / "publisher", distribution.url, 0, fleet)
    module = await publisher.package(SCORE)

    def nowhere(name: str) -> bytes:
        doc = publisher.document(name, 1, module, MODULE_PORT, target="tags.site = 'nowhere'")
        return publisher.signed(doc)

    async def early(hub: HubSide) -> None:
        await hub.put_document("deployments", "early", nowhere("early"))

    async with agent_on("iothub-sas", tmp_path, distribution, sdk_env, publisher, early) as (hub, logs):

        async def outcomes(*names: str) -> dict[str, str] | None:
            state = await hub.reported() or {}
            found = {n: state.get("deployments", {}).get(n, {}).get("outcome") for n in names}
            return found if all(found.values()) else None

        assert await poll(lambda: outcomes("early"), "the initial twin judged", logs) == {
            "early": "not-targeted"
        }
        await hub.put_document("deployments", "quiet", nowhere("quiet"), silent=True)
        await hub.put_document("deployments", "loud", nowhere("loud"))
        found = await poll(lambda: outcomes("quiet", "loud"), "the missed patch caught up", logs)
        assert found == {"quiet": "not-targeted", "loud": "not-targeted"}
        assert "quiet" not in (await hub.reported() or {}).get("modules", {})


async def test_the_publisher_cli_deploys_through_iot_hub_to_the_agent(
    tmp_path: Path, distribution: Service, sdk_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The whole path: `modelfleet deploy create --hub azureiot://...` writes the twin through the
    service REST API, the agent (real SDK) applies it, `modelfleet status` reads the reported
    properties, `modelfleet device logs` is a direct method through the hub."""
    fleet = f"az{os.urandom(3).hex()}"
    publisher = await asyncio.to_thread(Publisher, tmp_path / "publisher", distribution.url, 0, fleet)
    module = await publisher.package(SCORE)
    async with agent_on("iothub-sas", tmp_path, distribution, sdk_env, publisher) as (hub, logs):
        monkeypatch.setenv("SSL_CERT_FILE", str(hub.ca_file))
        monkeypatch.setenv("MODELFLEET_IOTHUB_SERVICE_CONNECTION_STRING", hub.service_connection_string)
        via = ("--hub", f"azureiot://localhost:{hub.rest_port}")
        await poll(hub.reported, "the agent's first report (how the publisher knows the device)", logs)

        code, out, err = await acli(
            publisher.ws, "deploy", "create", "-n", "iris", "--module",
            f"{publisher.module_name}:{module.version}", "--port", str(MODULE_PORT), *via,
        )  # fmt: skip
        assert code == 0 and "published iris version 1" in out, err

        async def device_status() -> dict[str, Any] | None:
            code, out, err = await acli(publisher.ws, "status", "--json", *via)
            assert code == 0, err
            rows = [d for d in json.loads(out)["devices"] if d["device_id"] == DEVICE]
            iris = rows[0]["deployments"].get("iris", {}) if rows else {}
            return rows[0] if iris.get("outcome") == "applied" else None

        row = await poll(device_status, "status showing iris applied on the device", logs)
        [(name, state)] = row["modules"].items()  # the CLI names the module after its package
        assert row["online"] is True and state["status"] == "running"

        code, out, err = await acli(publisher.ws, "device", "logs", DEVICE, name, "--json", *via)
        assert code == 0, err
        assert json.loads(out)["module"] == name
