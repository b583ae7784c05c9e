"""On an open broker, the publisher signs nothing it did not write: a forged document on a
deployment topic stops `deploy update` and a rollout's abort with a clear error, leaves the topic as
the forger left it, and never pushes the publisher's numbering; `status` shows forgeries and garbage
as what they are without crashing."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from modules.deployment import DeploymentDocument, verify_document
from publisher import FleetConnection, Workspace
from publisher._rollout import drive
from publisher._trust import UnverifiedDocumentError
from tests._services import Service
from tests.publisher._forge import aheld, aput, forged_document, presence, publish_real, report
from tests.publisher._harness import acli, status_json, workspace


def _ws(tmp_path: Path, distribution: Service, mosquitto: Service) -> Workspace:
    return workspace(tmp_path / "ws", distribution, mosquitto, "forge" + os.urandom(3).hex())


def _topic(ws: Workspace, name: str) -> str:
    return f"modelfleet/{ws.fleet}/deployments/{name}"


async def test_update_refuses_every_kind_of_forged_document_and_numbering_stays_on_verified_data(
    tmp_path: Path, distribution: Service, mosquitto: Service
) -> None:
    ws = _ws(tmp_path, distribution, mosquitto)
    genuine = await publish_real(ws, "iris")
    assert genuine["version"] == 1
    topic = _topic(ws, "iris")
    foreign = Ed25519PrivateKey.generate()
    per_device = await publish_real(ws, "iris", device="dev-1")  # genuine, but for one device only
    forgeries = {
        "unsigned, high version": (forged_document(ws.fleet, "iris", 999), "is not signed"),
        "signed by a foreign key": (forged_document(ws.fleet, "iris", 999, key=foreign), "not trusted"),
        "genuine, with its version raised": ({**genuine, "version": 999}, "does not match"),
        "per-device document on the fleet topic": (per_device, "per-device document"),
        "not JSON": (b"\x00\xffnot json", "not UTF-8"),
    }
    for label, (forged, reason) in forgeries.items():
        await aput(mosquitto.port, topic, forged)
        code, out, err = await acli(ws, "deploy", "update", "-n", "iris", "--priority", "7")
        assert code == 1, (label, out, err)
        assert "is not verified" in err and topic in err and reason in err, (label, err)
        assert "nothing was published" in err, label
        held = await aheld(mosquitto.port, topic)
        expected = forged if isinstance(forged, bytes) else json.dumps(forged).encode()
        assert held == expected, f"{label}: the publisher wrote over the forgery"

    # A valid signature on a document for another identity is not accepted either.
    other = await publish_real(ws, "other")
    await aput(mosquitto.port, topic, other)
    code, _, err = await acli(ws, "deploy", "update", "-n", "iris")
    assert code == 1 and "sits on the topic of 'iris'" in err, err

    # Once the genuine document is back (anyone can replay it), the next version is 2: nothing the
    # forgeries claimed (999) moved the numbering.
    await aput(mosquitto.port, topic, genuine)
    code, out, err = await acli(ws, "deploy", "update", "-n", "iris", "--priority", "7")
    assert code == 0, err
    assert "published iris version 2" in out
    held = json.loads(await aheld(mosquitto.port, topic))
    assert (held["version"], held["priority"]) == (2, 7)
    verify_document(held, [ws.verify_key])


async def test_a_rollout_abort_restores_nothing_over_a_forgery_nor_from_an_unverified_previous(
    tmp_path: Path, distribution: Service, mosquitto: Service
) -> None:
    ws = _ws(tmp_path, distribution, mosquitto)
    topic = _topic(ws, "iris")
    v1 = await publish_real(ws, "iris")
    v2 = await publish_real(ws, "iris")
    assert (v1["version"], v2["version"]) == (1, 2)
    # One device (its report is all the watcher needs) fails version 2, so the rollout aborts.
    failing = {"iris": {"version": 2, "outcome": "failed", "reason": "boom"}}
    await aput(
        mosquitto.port,
        f"modelfleet/{ws.fleet}/devices/d1/reported",
        report(ws.fleet, "d1", deployments=failing),
    )
    await aput(mosquitto.port, f"modelfleet/{ws.fleet}/devices/d1/status", presence("d1"))

    # 1. The broker holds a forgery when the abort would restore version 1: it refuses.
    forged = forged_document(ws.fleet, "iris", 50)
    await aput(mosquitto.port, topic, forged)
    async with FleetConnection(ws) as hub:
        with pytest.raises(UnverifiedDocumentError, match="is not signed") as caught:
            await drive(hub, ws, DeploymentDocument.model_validate(v2), v1, step_timeout_s=5)
    assert caught.value.topic == topic
    assert json.loads(await aheld(mosquitto.port, topic)) == forged

    # 2. The document to restore is itself unverified (say, read back from a forged topic): refused,
    # and the genuine version 2 stays the newest.
    await aput(mosquitto.port, topic, v2)
    unsigned_previous = {k: v for k, v in v1.items() if k != "signature"}
    async with FleetConnection(ws) as hub:
        with pytest.raises(UnverifiedDocumentError, match="is not signed"):
            await drive(hub, ws, DeploymentDocument.model_validate(v2), unsigned_previous, step_timeout_s=5)
    assert json.loads(await aheld(mosquitto.port, topic)) == v2

    # 3. Driving a document that is not ours is refused before anything else.
    async with FleetConnection(ws) as hub:
        with pytest.raises(UnverifiedDocumentError):
            await drive(hub, ws, DeploymentDocument.model_validate(forged), v1, step_timeout_s=5)

    # 4. With everything genuine the abort restores version 1's content as version 3.
    async with FleetConnection(ws) as hub:
        result = await drive(hub, ws, DeploymentDocument.model_validate(v2), v1, step_timeout_s=1)
    assert not result.ok and result.version == 3
    held = json.loads(await aheld(mosquitto.port, topic))
    assert held["version"] == 3 and held["content"] == v1["content"]
    verify_document(held, [ws.verify_key])


async def test_status_lists_forgeries_and_garbage_as_unverified_or_unreadable_without_crashing(
    tmp_path: Path, distribution: Service, mosquitto: Service, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MODELFLEET_MAX_PAYLOAD_BYTES", "4096")
    ws = _ws(tmp_path, distribution, mosquitto)
    prefix = f"modelfleet/{ws.fleet}"
    await publish_real(ws, "real")
    await aput(mosquitto.port, f"{prefix}/deployments/evil", forged_document(ws.fleet, "evil", 9))
    big = forged_document(ws.fleet, "big", 1)
    big["padding"] = "x" * 8000
    await aput(mosquitto.port, f"{prefix}/deployments/big", big)
    await aput(mosquitto.port, f"{prefix}/deployments/deep", b"[" * 100 + b"]" * 100)
    await aput(mosquitto.port, f"{prefix}/devices/d9/desired", forged_document(ws.fleet, "evil", 9))
    await aput(mosquitto.port, f"{prefix}/devices/junk/reported", b"\x00garbage")
    await aput(mosquitto.port, f"{prefix}/devices/odd/reported", {"device_id": "odd", "fleet": 3})
    await aput(mosquitto.port, f"{prefix}/devices/odd/status", b"[]")
    await aput(mosquitto.port, f"{prefix}/devices/ok/reported", report(ws.fleet, "ok", tags={"site": "a"}))

    status = await status_json(ws)
    assert [d["name"] for d in status["deployments"]] == ["real"]
    unverified = {u["topic"]: u["reason"] for u in status["unverified"]}
    assert "is not signed" in unverified[f"{prefix}/deployments/evil"]
    assert "above the limit of 4096" in unverified[f"{prefix}/deployments/big"]
    assert "nesting deeper" in unverified[f"{prefix}/deployments/deep"]
    assert "is not signed" in unverified[f"{prefix}/devices/d9/desired"]
    rows = {d["device_id"]: d for d in status["devices"]}
    assert rows["junk"]["health"] == "unreadable" and "unreadable reported" in rows["junk"]["problem"]
    assert "unreadable status" in rows["odd"]["problem"] and "unreadable reported" in rows["odd"]["problem"]
    assert rows["ok"]["problem"] is None and rows["ok"]["enrolment"] == "unenrolled"

    code, out, err = await acli(ws, "status")
    assert code == 0, err
    assert f"UNVERIFIED {prefix}/deployments/evil" in out and "device junk: unreadable reported" in out
    code, out, err = await acli(ws, "deploy", "list")
    assert code == 0 and out.startswith("NAME") and "UNVERIFIED" in out, err
    code, out, err = await acli(ws, "device", "list", "--json")
    assert code == 0 and {"junk", "odd", "ok"} <= {d["device_id"] for d in json.loads(out)}, err
    code, out, err = await acli(ws, "deploy", "show", "evil")
    assert code == 0 and "is not verified" in err and json.loads(out)["name"] == "evil"
