"""What an attacker on an open broker can do, and what the tests read back, without any agent.

Documents are published straight onto the real Mosquitto with a bare paho client, as anyone who can
reach the broker could; retained messages are read back the same way.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import time
from datetime import UTC, datetime
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from modules.deployment import sign_mapping
from publisher import FleetConnection, Workspace, _deploy
from publisher._deploy import DeploymentSettings
from tests.edge_agent._fleet import mqtt_client, read_retained

FAKE_DIGEST = "sha256:" + "ab" * 32


def retained_under(port: int, prefix: str, idle: float = 0.6) -> dict[str, bytes]:
    """Every retained message under `prefix`, read by subscribing as anyone could."""
    seen: dict[str, bytes] = {}
    last = [time.monotonic()]
    client = mqtt_client(f"reader-{os.urandom(3).hex()}")

    def on_message(_c, _u, msg) -> None:  # type: ignore[no-untyped-def]
        if msg.retain:
            seen[msg.topic] = msg.payload
        last[0] = time.monotonic()

    client.on_message = on_message
    client.connect("127.0.0.1", port)
    client.subscribe(f"{prefix}/#", qos=1)
    client.loop_start()
    try:
        while time.monotonic() - last[0] < idle:
            time.sleep(0.05)
    finally:
        client.disconnect()
        client.loop_stop()
    return seen


def put(port: int, topic: str, payload: bytes) -> None:
    """Publish retained, QoS 1, as an anonymous client on the open broker."""
    client = mqtt_client(f"forger-{os.urandom(3).hex()}")
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        client.publish(topic, payload, qos=1, retain=True).wait_for_publish(10)
    finally:
        client.disconnect()  # first: it wakes the network loop, so loop_stop returns at once
        client.loop_stop()


async def aput(port: int, topic: str, payload: bytes | dict[str, Any]) -> None:
    data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    await asyncio.to_thread(put, port, topic, data)


async def aretained(port: int, prefix: str) -> dict[str, bytes]:
    return await asyncio.to_thread(retained_under, port, prefix)


def held(port: int, topic: str, timeout: float = 2.0) -> bytes | None:
    """The retained message on one topic: returns as soon as it arrives, None if none does."""
    return read_retained(port, topic, timeout)


async def aheld(port: int, topic: str) -> bytes | None:
    return await asyncio.to_thread(held, port, topic)


def forged_document(fleet: str, name: str, version: int, *, key: Ed25519PrivateKey | None = None) -> dict:
    """A well-formed deployment document, unsigned or signed by a key nobody trusts."""
    data = {
        "fleet": fleet,
        "name": name,
        "version": version,
        "targetCondition": "*",
        "priority": 100,
        "layered": False,
        "content": {
            "modulesContent": {
                "$edgeAgent": {
                    "properties.desired": {
                        "schemaVersion": "1.1",
                        "runtime": {"type": "process"},
                        "modules": {
                            "evil": {
                                "version": "1",
                                "type": "modelfleet",
                                "status": "running",
                                "restartPolicy": "always",
                                "settings": {
                                    "module": "modules/evil",
                                    "digest": "sha256:" + "cd" * 32,
                                    "port": 5001,
                                },
                            }
                        },
                    }
                }
            }
        },
        "createdAt": "2024-05-01T12:00:00Z",
    }
    return sign_mapping(data, key) if key is not None else data


async def publish_real(
    ws: Workspace,
    name: str,
    *,
    target: str = "*",
    auth: bool = False,
    device: str | None = None,
) -> dict[str, Any]:
    """A genuine signed document, published through the publisher's own code (no registry needed:
    the module is pinned by a made-up digest and no agent ever pulls it); returns its wire form."""
    settings = DeploymentSettings(target=target, auth=auth, device=device, min_healthy_seconds=0)
    modules = {
        "svc": {
            "version": "1",
            "type": "modelfleet",
            "status": "running",
            "restartPolicy": "always",
            "settings": {"module": "modules/svc", "digest": FAKE_DIGEST, "port": 5001}
            | ({"auth": True} if auth else {}),
        }
    }
    async with FleetConnection(ws) as hub:
        version = _deploy.next_version(hub, ws, name, device)
        doc = await _deploy.publish(hub, ws, _deploy.document_data(ws, name, version, modules, settings))
    return doc.to_json_dict()


def report(
    fleet: str,
    device_id: str,
    *,
    tags: dict[str, Any] | None = None,
    public_key: str | None = None,
    deployments: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A `ReportedState` as anyone may publish it on a device's reported topic."""
    now = datetime.now(UTC).isoformat()
    return {
        "device_id": device_id,
        "fleet": fleet,
        "seq": 1,
        "at": now,
        "tags": tags or {},
        "device": {"agent_version": "0", "platform": "x", "python": "3", "public_key": public_key},
        "deployments": {
            name: {"name": name, "at": now, **state} for name, state in (deployments or {}).items()
        },
    }


def presence(device_id: str) -> dict[str, Any]:
    return {"device_id": device_id, "online": True, "at": datetime.now(UTC).isoformat()}


def x25519_pair() -> tuple[X25519PrivateKey, str]:
    key = X25519PrivateKey.generate()
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return key, base64.b64encode(raw).decode()
