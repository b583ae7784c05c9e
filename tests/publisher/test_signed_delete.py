"""Deleting is a signed tombstone in the document's place, one version above the last, and a
deployment re-created under the same name continues above it (agents keep the tombstone's version
as the floor for ever)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from modules.deployment import Tombstone, is_tombstone, verify_document
from publisher import Model, Module, Workspace
from tests._services import Service
from tests.publisher._forge import aheld, aput, forged_document, publish_real
from tests.publisher._harness import IRIS, acli, workspace


async def test_delete_publishes_a_verified_tombstone_and_a_re_create_continues_above_it(
    tmp_path: Path, distribution: Service, mosquitto: Service
) -> None:
    ws: Workspace = workspace(tmp_path / "ws", distribution, mosquitto, "tomb" + os.urandom(3).hex())
    topic = f"modelfleet/{ws.fleet}/deployments/iris"
    model = await Model.register_async(ws, IRIS, "iris")
    module = await Module.package_async(ws, "iris-svc", [model])
    ref = f"iris-svc:{module.version}"
    code, out, err = await acli(
        ws, "deploy", "create", "-n", "iris", "--module", f"iris-svc:{module.version}"
    )
    assert code == 0 and "published iris version 1" in out, err
    code, out, err = await acli(ws, "deploy", "update", "-n", "iris", "--priority", "3")
    assert code == 0 and "published iris version 2" in out, err

    code, out, err = await acli(ws, "deploy", "delete", "iris")
    assert code == 0, err
    assert "tombstone at version 3" in out
    raw = json.loads(await aheld(mosquitto.port, topic) or b"null")
    assert is_tombstone(raw)
    verify_document(raw, [ws.verify_key])
    tombstone = Tombstone.model_validate(raw)
    assert (tombstone.of, tombstone.fleet, tombstone.name, tombstone.device, tombstone.version) == (
        "deployment", ws.fleet, "iris", None, 3
    )  # fmt: skip

    # Deleted: not listed, not updatable, not deletable twice.
    code, out, _ = await acli(ws, "deploy", "list")
    assert out.strip() == "no deployments"
    code, _, err = await acli(ws, "deploy", "update", "-n", "iris")
    assert code == 1 and "deleted at version 3" in err
    code, _, err = await acli(ws, "deploy", "delete", "iris")
    assert code == 1 and "deleted at version 3" in err

    # Re-created: above the tombstone, on its own; an explicit version at or below it is refused.
    code, _, err = await acli(ws, "deploy", "create", "-n", "iris", "--module", ref, "--version", "3")
    assert code == 2 and "not above 3" in err, err
    code, out, err = await acli(
        ws, "deploy", "create", "-n", "iris", "--module", f"iris-svc:{module.version}"
    )
    assert code == 0 and "published iris version 4" in out, err

    # The workspace remembers too: with the broker's memory gone (a restart without persistence),
    # a re-create still continues above everything published.
    await aput(mosquitto.port, topic, b"")
    code, out, err = await acli(
        ws, "deploy", "create", "-n", "iris", "--module", f"iris-svc:{module.version}"
    )
    assert code == 0 and "published iris version 5" in out, err


async def test_override_delete_and_deleting_over_a_forgery(
    tmp_path: Path, distribution: Service, mosquitto: Service
) -> None:
    ws: Workspace = workspace(tmp_path / "ws", distribution, mosquitto, "tomb" + os.urandom(3).hex())
    await publish_real(ws, "iris", device="dev-1")
    code, out, err = await acli(ws, "deploy", "delete", "iris", "--device", "dev-1")
    assert code == 0 and "tombstone at version 2" in out, err
    raw = json.loads(await aheld(mosquitto.port, f"modelfleet/{ws.fleet}/devices/dev-1/desired") or b"null")
    verify_document(raw, [ws.verify_key])
    assert (raw["kind"], raw["device"], raw["version"]) == ("tombstone", "dev-1", 2)

    # A forgery in the place of a deployment: delete refuses unless told, then buries it above the
    # last version this workspace published (the forgery's own version means nothing).
    topic = f"modelfleet/{ws.fleet}/deployments/web"
    await publish_real(ws, "web")
    await aput(mosquitto.port, topic, forged_document(ws.fleet, "web", 900))
    code, _, err = await acli(ws, "deploy", "delete", "web")
    assert code == 1 and "is not verified" in err and "--replace-unverified" in err
    assert json.loads(await aheld(mosquitto.port, topic) or b"null")["version"] == 900
    code, out, err = await acli(ws, "deploy", "delete", "web", "--replace-unverified")
    assert code == 0 and "tombstone at version 2" in out, err
    raw = json.loads(await aheld(mosquitto.port, topic) or b"null")
    verify_document(raw, [ws.verify_key])
    assert raw["kind"] == "tombstone"
