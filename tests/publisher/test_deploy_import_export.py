"""IoT Edge manifests in and out through the CLI, against the real broker: `deploy import` signs
and publishes what Azure's tools wrote (bare, wrapped, layered), `deploy export --format iotedge`
writes content IoT Hub's schema accepts, and that content imports again. Every `deploy` verb
takes the deployment's name positionally and as `-n NAME`."""

from __future__ import annotations

import json
import os
from pathlib import Path

import rapidjson

from modules.deployment import DeploymentDocument, verify_document
from publisher import Workspace
from tests._services import Service
from tests.publisher._forge import aheld
from tests.publisher._harness import acli, workspace

DATA = Path(__file__).parents[1] / "deployment" / "data"
IOTEDGE = DATA / "iotedge"
IOT_HUB_SCHEMA = rapidjson.Validator((DATA / "iothub-edge-deployment-content.schema.json").read_text())


async def held(ws: Workspace, port: int, name: str) -> DeploymentDocument:
    raw = json.loads(await aheld(port, f"modelfleet/{ws.fleet}/deployments/{name}") or b"null")
    verify_document(raw, [ws.verify_key])
    return DeploymentDocument.model_validate(raw)


async def test_import_export_and_import_again(
    tmp_path: Path, distribution: Service, mosquitto: Service
) -> None:
    ws = workspace(tmp_path / "ws", distribution, mosquitto, "edge" + os.urandom(3).hex())

    # `az iot edge deployment show` output: name, condition and priority come from the file.
    code, out, err = await acli(ws, "deploy", "import", str(IOTEDGE / "wrapped-deployment-show.json"))
    assert code == 0, err
    assert "published deployment plant1-base version 1 (target \"tags.site='plant-1'" in out
    assert "docker module" not in err, "docker modules run on the agent's docker runtime: no caveat"
    doc = await held(ws, mosquitto.port, "plant1-base")
    original = json.loads((IOTEDGE / "wrapped-deployment-show.json").read_text())
    assert doc.to_json_dict()["content"] == original["content"]
    assert (doc.priority, doc.layered) == (10, False)

    # A layered manifest needs --layered, and says so.
    layer = str(IOTEDGE / "layered-module-route-twin.json")
    code, _, err = await acli(ws, "deploy", "import", layer, "-n", "sensor-layer")
    assert code == 2 and "is a layered deployment's key" in err and "--layered" in err
    code, out, err = await acli(
        ws, "deploy", "import", layer, "-n", "sensor-layer", "--layered", "--priority", "5"
    )
    assert code == 0 and "published layered deployment sensor-layer version 1" in out, err

    # Re-importing an edited manifest publishes the next version, keeping condition and priority.
    code, out, err = await acli(
        ws, "deploy", "import", str(IOTEDGE / "base-simulated-sensor.json"), "-n", "plant1-base"
    )
    assert code == 0 and "version 2" in out, err
    assert (await held(ws, mosquitto.port, "plant1-base")).priority == 10

    # Export: content IoT Hub accepts; both name spellings; to a file.
    exported = tmp_path / "plant1.json"
    code, _, err = await acli(
        ws, "deploy", "export", "plant1-base", "--format", "iotedge", "-o", str(exported)
    )
    assert code == 0, err
    IOT_HUB_SCHEMA(exported.read_text())
    code, out, err = await acli(ws, "deploy", "export", "-n", "plant1-base")
    assert code == 0 and json.loads(out) == json.loads(exported.read_text()), err

    # ... and it imports again under another name, with the same modules.
    code, out, err = await acli(ws, "deploy", "import", str(exported), "-n", "plant1-copy")
    assert code == 0, err
    copy = await held(ws, mosquitto.port, "plant1-copy")
    current = await held(ws, mosquitto.port, "plant1-base")
    assert copy.content.modules == current.content.modules
    assert copy.content.modules_content.module_twins == current.content.modules_content.module_twins


async def test_every_deploy_verb_takes_the_name_both_ways(
    tmp_path: Path, distribution: Service, mosquitto: Service
) -> None:
    ws = workspace(tmp_path / "ws", distribution, mosquitto, "names" + os.urandom(3).hex())
    code, _, err = await acli(
        ws, "deploy", "import", str(IOTEDGE / "base-simulated-sensor.json"), "-n", "sensor"
    )
    assert code == 0, err

    for verb in ("show", "export"):
        positional = await acli(ws, "deploy", verb, "sensor")
        option = await acli(ws, "deploy", verb, "-n", "sensor")
        assert positional[0] == option[0] == 0 and positional[1] == option[1], (positional, option)
    code, _, err = await acli(ws, "deploy", "show", "sensor", "-n", "other")
    assert code == 2 and "two deployment names" in err
    code, _, err = await acli(ws, "deploy", "show")
    assert code == 2 and "a deployment name is needed" in err
    code, out, err = await acli(ws, "deploy", "update", "sensor", "--priority", "4")
    assert code == 0 and "published sensor version 2" in out, err
    code, out, err = await acli(ws, "deploy", "delete", "-n", "sensor")
    assert code == 0 and "tombstone at version 3" in out, err
