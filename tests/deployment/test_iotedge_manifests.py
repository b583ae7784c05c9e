"""IoT Edge manifests of every shape Azure's tools and docs write: they parse, come back out byte
for byte (key order included), sign and verify, and mean what IoT Hub means when layered."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pydantic import ValidationError

from modules.deployment import (
    DeploymentDocument,
    DeploymentFile,
    DeploymentRef,
    DeviceFacts,
    DockerModule,
    Manifest,
    ManifestError,
    canonical_json,
    manifest_of,
    parse_manifest_file,
    select_deployments,
    sign_document,
    signing_payload,
    split_create_options,
    verify_document,
)

DATA = Path(__file__).parent / "data" / "iotedge"
FILES = sorted(path.name for path in DATA.glob("*.json"))
KEY = Ed25519PrivateKey.generate()
DEVICE = DeviceFacts("gw-01", tags={"site": "plant-1"})


def load(name: str) -> dict[str, Any]:
    return json.loads((DATA / name).read_text())


def document(name: str, content: dict[str, Any], **fields: Any) -> DeploymentDocument:
    data = {
        "fleet": "plant",
        "name": name,
        "version": 1,
        "layered": name.startswith("layered"),
        "content": content,
        "createdAt": datetime(2024, 5, 1, tzinfo=UTC),
        **fields,
    }
    return DeploymentDocument.model_validate(data)


def test_there_are_at_least_a_dozen_manifests_of_both_kinds() -> None:
    assert len(FILES) >= 12
    assert sum(name.startswith("layered") for name in FILES) >= 4
    assert sum(name.startswith("wrapped") for name in FILES) >= 2


@pytest.mark.parametrize("name", FILES)
def test_manifest_file_round_trips_exactly_key_order_included(name: str) -> None:
    text = (DATA / name).read_text()
    original = json.loads(text)

    parsed = parse_manifest_file(original)

    assert parsed.to_json_dict() == original
    assert json.dumps(parsed.to_json_dict(), indent=2, ensure_ascii=False) + "\n" == text
    assert isinstance(parsed, DeploymentFile) == ("modulesContent" not in original)


@pytest.mark.parametrize("name", FILES)
def test_manifest_signs_and_verifies_inside_a_deployment_document(name: str) -> None:
    manifest = manifest_of(parse_manifest_file(load(name))).to_json_dict()
    signed = sign_document(document(name.removesuffix(".json"), manifest), KEY)

    wire = json.loads(json.dumps(signed.to_json_dict()))

    assert verify_document(wire, [KEY.public_key()]) == signed.signature.key_id
    assert verify_document(DeploymentDocument.model_validate(wire), [KEY.public_key()])
    assert json.dumps(wire["content"]) == json.dumps(manifest)  # same order inside the document
    assert signing_payload(wire) == canonical_json({k: v for k, v in wire.items() if k != "signature"})


def test_chunked_create_options_are_joined_on_read() -> None:
    manifest = parse_manifest_file(load("base-chunked-create-options.json"))
    assert isinstance(manifest, Manifest)
    camera = manifest.modules["cameraCapture"]
    assert isinstance(camera, DockerModule)

    options = camera.settings.create_options_dict()

    assert options["HostConfig"]["Devices"][0]["PathOnHost"] == "/dev/video0"
    assert len(options["Env"]) == 16
    hub = (manifest.agent.system_modules or {})["edgeHub"]
    assert hub.settings.create_options_dict()["HostConfig"]["PortBindings"]["443/tcp"] == [
        {"HostPort": "443"}
    ]


def test_create_options_are_split_on_write_as_iot_edge_cuts_them() -> None:
    settings = load("base-chunked-create-options.json")["modulesContent"]["$edgeAgent"]["properties.desired"]
    camera = settings["modules"]["cameraCapture"]["settings"]
    joined = "".join(v for k, v in camera.items() if k.startswith("createOptions"))

    assert split_create_options(joined) == {k: v for k, v in camera.items() if k.startswith("createOptions")}
    assert split_create_options(json.loads(joined)) == split_create_options(joined)
    assert split_create_options("{}") == {"createOptions": "{}"}
    with pytest.raises(ValueError, match="above IoT Edge's limit of 4096"):
        split_create_options("x" * 4097)


def _sensor(**settings: Any) -> dict[str, Any]:
    raw = load("base-simulated-sensor.json")
    raw["modulesContent"]["$edgeAgent"]["properties.desired"]["modules"]["SimulatedTemperatureSensor"][
        "settings"
    ] = settings
    return raw


def test_chunks_with_a_gap_are_refused() -> None:
    raw = _sensor(image="a:1", createOptions="{", createOptions01="}", createOptions03="")

    with pytest.raises(ManifestError, match=r"without gaps.*got createOptions01, createOptions03"):
        parse_manifest_file(raw)


def test_errors_name_the_path_in_the_file() -> None:
    raw = _sensor(createOptions="{}")

    with pytest.raises(ManifestError) as caught:
        parse_manifest_file(raw)

    assert str(caught.value) == (
        "modulesContent.$edgeAgent['properties.desired'].modules.SimulatedTemperatureSensor.settings.image: "
        "field required"
    )
    wrapped = {"content": raw}
    with pytest.raises(
        ManifestError, match=r"^content\.modulesContent\.\$edgeAgent\['properties\.desired'\]"
    ):
        parse_manifest_file(wrapped)


def test_an_error_inside_a_layered_key_names_that_key() -> None:
    raw = load("layered-module-route-twin.json")
    del raw["content"]["modulesContent"]["$edgeAgent"][
        "properties.desired.modules.SimulatedTemperatureSensor"
    ]["type"]

    with pytest.raises(ManifestError) as caught:
        parse_manifest_file(raw)

    assert str(caught.value) == (
        "content.modulesContent.$edgeAgent['properties.desired.modules.SimulatedTemperatureSensor'].type: "
        "field required (docker or modelfleet)"
    )


@pytest.mark.parametrize(
    ("twin", "version", "accepted"),
    [
        ("$edgeAgent", "1.0", True),
        ("$edgeAgent", "1.1", True),
        ("$edgeAgent", "1.2", False),
        ("$edgeAgent", "9.9", False),
        ("$edgeHub", "1.2", True),
        ("$edgeHub", "2.0", False),
    ],
)
def test_only_schema_versions_iot_edge_supports_are_accepted(twin: str, version: str, accepted: bool) -> None:
    raw = load("base-simulated-sensor.json")
    raw["modulesContent"][twin]["properties.desired"]["schemaVersion"] = version

    if accepted:
        parse_manifest_file(raw)
        return
    expected = f"schemaVersion '{version}' is not one IoT Edge supports for {twin}"
    with pytest.raises(ManifestError, match=re.escape(expected)):
        parse_manifest_file(raw)


def test_route_objects_need_edge_hub_schema_1_1() -> None:
    raw = load("base-edgehub-1-2-route-objects.json")
    raw["modulesContent"]["$edgeHub"]["properties.desired"]["schemaVersion"] = "1.0"

    with pytest.raises(ManifestError, match=r"route 'alertsToCloud' is an object.*needs schemaVersion 1\.1"):
        parse_manifest_file(raw)


@pytest.mark.parametrize("order", [4_294_967_296, -1, True, 1.0, "1"])
def test_startup_order_is_a_uint32_and_nothing_else(order: object) -> None:
    raw = load("base-startup-order-and-policies.json")
    raw["modulesContent"]["$edgeAgent"]["properties.desired"]["modules"]["historian"]["startupOrder"] = order

    with pytest.raises(ManifestError, match=r"modules\.historian\.startupOrder"):
        parse_manifest_file(raw)


def test_a_null_env_value_leaves_the_variable_unset_instead_of_none() -> None:
    manifest = manifest_of(parse_manifest_file(load("base-env-and-module-twins.json")))
    module = manifest.modules["machineLearning"]

    assert module.environment() == {
        "MODEL_NAME": "defect-classifier",
        "THRESHOLD": "0.85",
        "BATCH": "4",
        "VERBOSE": "True",
    }
    assert module.env is not None and module.env["OPTIONAL_PROXY"].as_text() is None
    assert manifest.to_json_dict()["modulesContent"]["machineLearning"]["properties.desired"]["owner"] is None


def test_an_unknown_key_in_a_twin_section_is_refused() -> None:
    raw = load("layered-twin-subsection-only.json")
    raw["modulesContent"]["SimulatedTemperatureSensor"]["desired.SendData"] = True

    with pytest.raises(ManifestError, match=r"unknown key 'desired\.SendData'"):
        parse_manifest_file(raw)


def test_a_layered_manifest_is_not_accepted_as_a_base_deployment() -> None:
    layer = manifest_of(parse_manifest_file(load("layered-module-route-twin.json"))).to_json_dict()

    with pytest.raises(ValidationError, match="is a layered deployment's key"):
        document("not-layered", layer, layered=False)
    only_twins = load("layered-twin-subsection-only.json")
    with pytest.raises(ValidationError, match=r"\$edgeAgent\['properties.desired'\]: field required"):
        document("not-layered", {"modulesContent": {"$edgeAgent": {}, **{"x": {"properties.desired": {}}}}})
    assert document("layered-twins", only_twins).layered


# -- layering, as IoT Hub merges it -------------------------------------------------------------


def _docs(*names_and_priorities: tuple[str, int]) -> list[DeploymentDocument]:
    return [
        document(
            name.removesuffix(".json"),
            manifest_of(parse_manifest_file(load(name))).to_json_dict(),
            priority=p,
        )
        for name, p in names_and_priorities
    ]


def test_layers_add_modules_routes_and_twin_parts_over_the_base() -> None:
    docs = _docs(
        ("base-simulated-sensor.json", 0),
        ("layered-system-image-and-route-object.json", 5),
        ("layered-twin-subsection-only.json", 7),
    )

    selection = select_deployments(DEVICE, docs)

    assert selection.refused == ()
    assert [ref.name for ref in selection.applied] == [
        "base-simulated-sensor",
        "layered-system-image-and-route-object",
        "layered-twin-subsection-only",
    ]
    merged = selection.manifest
    assert merged is not None
    assert set(merged.modules) == {"SimulatedTemperatureSensor", "monitor"}
    system = merged.agent.system_modules or {}
    assert system["edgeHub"].settings.image == "mcr.microsoft.com/azureiotedge-hub:1.4.27"
    assert system["edgeHub"].settings.create_options_dict()["HostConfig"]["PortBindings"]
    hub = merged.modules_content.edge_hub
    assert hub is not None and set(hub.desired.routes or {}) == {"upstream", "monitorToCloud"}
    twins = merged.modules_content.module_twins
    assert twins["SimulatedTemperatureSensor"].desired == {
        "SendData": True,
        "SendInterval": 5,
        "layeredProperties": {"SendData": False, "SendInterval": 60},
    }
    assert twins["monitor"].desired == {
        "scrapeFrequencySecs": 300,
        "metricsFormat": "Json",
        "syncTarget": "AzureMonitor",
    }


def test_a_whole_module_twin_in_a_layer_replaces_it_and_the_stronger_layer_wins() -> None:
    sub_path = _docs(("layered-twin-subsection-only.json", 9))[0]
    whole = _docs(("layered-module-route-twin.json", 1))[0]
    base = _docs(("base-simulated-sensor.json", 0))[0]

    twin = select_deployments(DEVICE, [base, whole, sub_path]).manifest.modules_content.module_twins
    assert twin["SimulatedTemperatureSensor"].desired == {
        "SendData": True,
        "SendInterval": 5,
        "layeredProperties": {"SendData": False, "SendInterval": 60},
    }

    # The whole twin, applied after (stronger), replaces the sub-section the weaker layer set.
    weaker_sub_path = sub_path.model_copy(update={"priority": 0})
    stronger_whole = whole.model_copy(update={"priority": 9})
    twin = select_deployments(
        DEVICE, [base, stronger_whole, weaker_sub_path]
    ).manifest.modules_content.module_twins
    assert twin["SimulatedTemperatureSensor"].desired == {"SendData": True, "SendInterval": 5}


def test_a_layer_that_does_not_merge_is_left_out_with_its_reason() -> None:
    base = _docs(("base-simulated-sensor.json", 0))[0]
    bad = document(
        "layered-bad",
        {
            "modulesContent": {
                "$edgeAgent": {"properties.desired.modules.SimulatedTemperatureSensor.status": "paused"}
            }
        },
        priority=3,
    )
    good = _docs(("layered-system-image-and-route-object.json", 1))[0]

    selection = select_deployments(DEVICE, [base, bad, good])

    assert [ref.name for ref in selection.applied] == [
        "base-simulated-sensor",
        "layered-system-image-and-route-object",
    ]
    (ref, reason), *_ = selection.refused
    assert ref == DeploymentRef("layered-bad", 1)
    assert "modules.SimulatedTemperatureSensor" in reason and "status" in reason


def test_a_null_at_a_layer_path_removes_that_part() -> None:
    base = _docs(("base-simulated-sensor.json", 0))[0]
    layer = document(
        "layered-drop",
        {
            "modulesContent": {
                "$edgeAgent": {},
                "$edgeHub": {"properties.desired.routes.upstream": None},
                "SimulatedTemperatureSensor": {"properties.desired.SendInterval": None},
            }
        },
    )

    merged = select_deployments(DEVICE, [base, layer]).manifest

    assert merged.modules_content.edge_hub.desired.routes == {}
    assert merged.modules_content.module_twins["SimulatedTemperatureSensor"].desired == {"SendData": True}


def test_the_documented_layered_example_parses_and_merges() -> None:
    doc_text = (Path(__file__).parents[2] / "docs" / "manifest.md").read_text()
    section = doc_text.split("### Layered deployments", 1)[1]
    example = json.loads(re.search(r"```jsonc\n(.*?)```", section, re.S)[1])
    base = load("base-simulated-sensor.json")
    base["modulesContent"]["sensor"] = {"properties.desired": {"SendData": True}}

    merged = select_deployments(DEVICE, [document("base", base), document("layered-doc", example)]).manifest

    assert parse_manifest_file(example).to_json_dict() == example
    assert set(merged.modules) == {"SimulatedTemperatureSensor", "monitor"}
    assert merged.modules_content.module_twins["sensor"].desired == {
        "SendData": True,
        "layeredProperties": {"SendInterval": 60},
    }
