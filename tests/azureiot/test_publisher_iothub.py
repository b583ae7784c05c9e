"""The publisher on IoT Hub: `deploy create/update/delete`, `status` and `device ping/logs` write
and read device twins through the service REST API (a stand-in of it, `_twin_service.py`, over
TLS with a test CA, checking every SAS token), signing exactly what it signs for MQTT."""

from __future__ import annotations

import base64
import json
import os
import ssl
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from modules.azureiot import join_text, reported_summary
from modules.deployment import is_tombstone, verify_document
from modules.device_state import DeviceInfo, ReportedState, verify_method_request
from publisher import Model, Module, Workspace
from tests._services import Service, free_port
from tests.azureiot._harness import tls_files
from tests.azureiot._twin_service import TwinService
from tests.publisher._harness import IRIS, acli

POLICY = "service"


@pytest.fixture
async def service(tmp_path: Path) -> AsyncIterator[tuple[TwinService, int]]:
    _ca, cert, key = tls_files(tmp_path / "pki")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    twins = TwinService("localhost", POLICY, base64.b64encode(os.urandom(32)).decode())
    runner = web.AppRunner(twins.app())
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port, ssl_context=context).start()
    try:
        yield twins, port
    finally:
        await runner.cleanup()


def _report(device: str, fleet: str, tags: dict[str, Any]) -> dict[str, Any]:
    state = ReportedState(
        device_id=device,
        fleet=fleet,
        at=datetime.now(UTC),
        tags=tags,
        device=DeviceInfo(agent_version="0.1.0", platform="Linux", python="3.11"),
    )
    return {"modelfleet": {"state": reported_summary(json.loads(state.model_dump_json())),
                           "presence": {"online": True}}}  # fmt: skip


def _deployment_in(twins: TwinService, device: str, name: str) -> dict[str, Any] | None:
    section = twins.twins[device]["properties"]["desired"].get("modelfleet", {}).get("deployments", {})
    text = join_text(section.get(name))
    return json.loads(text) if text else None


async def test_deploy_status_and_methods_through_the_twin_rest_api(
    tmp_path: Path,
    distribution: Service,
    service: tuple[TwinService, int],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    twins, port = service
    fleet = "hub" + os.urandom(3).hex()
    ws = Workspace.create(
        tmp_path / "ws", registry=distribution.url, hub=f"azureiot://localhost:{port}", fleet=fleet
    )
    monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "pki" / "ca.pem"))
    monkeypatch.setenv(
        "MODELFLEET_IOTHUB_SERVICE_CONNECTION_STRING",
        f"HostName=localhost;SharedAccessKeyName={POLICY};SharedAccessKey={twins.key}",
    )
    twins.add_device("press-a", reported=_report("press-a", fleet, {"site": "a"}))
    twins.add_device("press-b", reported=_report("press-b", fleet, {"site": "b"}))
    twins.add_device("new-one", tags={"modelfleet": {"fleet": fleet}})  # provisioned, not reported yet
    twins.add_device("elsewhere", reported=_report("elsewhere", "other-fleet", {"site": "a"}))
    model = await Model.register_async(ws, IRIS, "iris")
    module = await Module.package_async(ws, "iris-svc", [model])

    code, out, err = await acli(
        ws,
        "deploy",
        "create",
        "-n",
        "iris",
        "--module",
        f"iris-svc:{module.version}",
        "--target",
        "tags.site = 'a'",
    )
    assert code == 0 and "published iris version 1" in out, err
    # the targeted device, and the one that cannot be judged yet; not press-b, not another fleet's
    assert sorted(d for d, _ in twins.patches) == ["new-one", "press-a"]
    doc = _deployment_in(twins, "press-a", "iris")
    assert doc is not None and doc["version"] == 1 and doc["fleet"] == fleet
    verify_document(doc, [ws.verify_key])  # the signed text, intact through the twin
    assert _deployment_in(twins, "press-b", "iris") is None
    assert _deployment_in(twins, "elsewhere", "iris") is None

    code, out, err = await acli(ws, "deploy", "update", "-n", "iris", "--priority", "3")
    assert code == 0 and "published iris version 2" in out, err
    assert _deployment_in(twins, "press-a", "iris")["version"] == 2

    code, out, err = await acli(ws, "status", "--json")
    assert code == 0, err
    status = json.loads(out)
    listed = {d["device_id"] for d in status["devices"]}
    assert {"press-a", "press-b"} <= listed and "elsewhere" not in listed

    signed_requests: list[dict[str, Any]] = []

    def answer(method: str, payload: Any) -> tuple[int, Any]:
        signed_requests.append(payload)
        return 200, {"pong": True, "deviceId": "press-a", "at": "2024-05-01T12:05:00Z"}

    twins.methods["press-a"] = answer
    code, out, err = await acli(ws, "device", "ping", "press-a")
    assert code == 0 and "press-a answered at 2024-05-01T12:05:00Z" in out, err
    request = signed_requests[0]
    verify_method_request(
        request, [ws.verify_key], fleet=fleet, device="press-a", method="ping",
        request_id=request["request_id"], now=datetime.now(UTC),
    )  # fmt: skip
    code, _, err = await acli(ws, "device", "ping", "press-b")  # offline: IoT Hub answers 404
    assert code != 0 and "did not answer" in err

    code, out, err = await acli(ws, "deploy", "delete", "iris")
    assert code == 0 and "tombstone at version 3" in out, err
    tombstone = _deployment_in(twins, "press-a", "iris")
    assert tombstone is not None and is_tombstone(tombstone)
    verify_document(tombstone, [ws.verify_key])
    assert twins.refused == []

    wrong_key = base64.b64encode(b"x" * 32).decode()
    monkeypatch.setenv(
        "MODELFLEET_IOTHUB_SERVICE_CONNECTION_STRING",
        f"HostName=localhost;SharedAccessKeyName={POLICY};SharedAccessKey={wrong_key}",
    )
    code, _, err = await acli(ws, "status")
    assert code != 0 and "401" in err
    assert twins.refused == ["signature does not match"]
