"""Scoring keys go only to enrolled devices that the deployment targets, sealed to the enrolled key:
a report (anyone can publish one) can neither get keys for itself nor enrol its own key."""

from __future__ import annotations

import base64
import hashlib
import json
import os
from pathlib import Path

import pytest

from modules.deployment import verify_document
from modules.service_keys import SealedKeysError, key_fingerprint, open_keys
from publisher import Workspace
from publisher._enrolment import EnrolmentError, fingerprint_of, normalize_fingerprint, parse_public_key
from tests._services import Service
from tests.publisher._forge import aput, aretained, presence, publish_real, report, x25519_pair
from tests.publisher._harness import acli, status_json, workspace


def test_the_fingerprint_is_sha256_over_the_raw_key_and_typed_separators_do_not_matter() -> None:
    _, public = x25519_pair()
    fingerprint = key_fingerprint(public)  # the agent's own function: both sides print the same
    assert len(fingerprint) >= 16
    assert fingerprint == hashlib.sha256(base64.b64decode(public)).hexdigest()[: len(fingerprint)]
    grouped = ":".join(fingerprint[i : i + 4] for i in range(0, len(fingerprint), 4)).upper()
    assert normalize_fingerprint(grouped) == fingerprint
    with pytest.raises(EnrolmentError):
        fingerprint_of(base64.b64encode(b"short").decode())
    with pytest.raises(EnrolmentError):
        parse_public_key("not a key")


async def test_keys_are_sealed_only_to_enrolled_targeted_devices_and_approve_checks_the_fingerprint(
    tmp_path: Path, distribution: Service, mosquitto: Service
) -> None:
    ws: Workspace = workspace(tmp_path / "ws", distribution, mosquitto, "enrol" + os.urandom(3).hex())
    prefix = f"modelfleet/{ws.fleet}"
    real_key, real_public = x25519_pair()  # t1's own key, read on the device by the operator
    forger_key, forger_public = x25519_pair()
    _, other_public = x25519_pair()
    devices = {
        # t1's report is forged: it carries the forger's key. The enrolment (below) has t1's own.
        "t1": report(ws.fleet, "t1", tags={"site": "a"}, public_key=forger_public),
        "rogue": report(ws.fleet, "rogue", tags={"site": "a"}, public_key=forger_public),  # never enrolled
        "b1": report(ws.fleet, "b1", tags={"site": "b"}, public_key=other_public),  # enrolled, not targeted
    }
    for device_id, state in devices.items():
        await aput(mosquitto.port, f"{prefix}/devices/{device_id}/reported", state)
        await aput(mosquitto.port, f"{prefix}/devices/{device_id}/status", presence(device_id))

    key_file = tmp_path / "t1.key"
    key_file.write_text(real_public + "\n")
    code, out, err = await acli(ws, "device", "enroll", "t1", "--key-file", str(key_file))
    assert code == 0 and key_fingerprint(real_public) in out, err

    # approve enrols what the device reports only if the fingerprint read on the device matches.
    code, _, err = await acli(ws, "device", "approve", "b1", "--fingerprint", key_fingerprint(forger_public))
    assert code == 1 and "not enrolled" in err and "forged" in err, err
    code, out, _ = await acli(ws, "device", "list-enrolled", "--json")
    assert [e["device_id"] for e in json.loads(out)] == ["t1"]
    code, out, err = await acli(ws, "device", "approve", "b1", "--fingerprint", key_fingerprint(other_public))
    assert code == 0 and "enrolled b1" in out, err

    code, out, err = await acli(ws, "device", "show", "t1")
    assert code == 0 and key_fingerprint(forger_public) in out and "KEY DIFFERS" in out, err
    status = await status_json(ws)
    enrolment = {d["device_id"]: d["enrolment"] for d in status["devices"]}
    assert enrolment == {"t1": "key-differs", "rogue": "unenrolled", "b1": "enrolled"}
    code, out, _ = await acli(ws, "status")
    assert "NO" in out.split() and "KEY DIFFERS" in out

    await publish_real(ws, "secure", target="tags.site = 'a'", auth=True)
    retained = await aretained(mosquitto.port, prefix)
    keyed = sorted(topic[len(prefix) + 1 :] for topic in retained if "/keys/" in topic)
    assert keyed == ["devices/t1/keys/secure"]  # not rogue (unenrolled), not b1 (not targeted)
    wire = json.loads(retained[f"{prefix}/devices/t1/keys/secure"])
    verify_document(wire, [ws.verify_key])
    _, keys = open_keys(wire, real_key, [ws.verify_key], fleet=ws.fleet, device="t1")
    code, out, _ = await acli(ws, "deploy", "keys", "secure", "--json")
    assert keys.primary.get_secret_value() == json.loads(out)["primary"]
    with pytest.raises(SealedKeysError):  # the key the report carried opens nothing
        open_keys(wire, forger_key, [ws.verify_key], fleet=ws.fleet, device="t1")

    # A second publish does not re-seal what t1 already holds; deleting withdraws it with a
    # signed tombstone above its version.
    await publish_real(ws, "secure", target="tags.site = 'a'", auth=True)
    again = await aretained(mosquitto.port, prefix)
    assert json.loads(again[f"{prefix}/devices/t1/keys/secure"])["version"] == wire["version"] == 1
    code, _, err = await acli(ws, "deploy", "delete", "secure")
    assert code == 0, err
    gone = json.loads((await aretained(mosquitto.port, prefix))[f"{prefix}/devices/t1/keys/secure"])
    verify_document(gone, [ws.verify_key])
    assert (gone["kind"], gone["of"], gone["device"], gone["version"]) == ("tombstone", "keys", "t1", 2)
