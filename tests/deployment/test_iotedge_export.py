"""`to_iotedge` writes what IoT Hub's edge deployment content schema (written from Azure's
documentation, tests/deployment/data/iothub-edge-deployment-content.schema.json) accepts, and
what it writes imports back to the same modules."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import rapidjson  # a JSON Schema (draft 4) validator, installed with tritonclient[http]

from modules.deployment import (
    Manifest,
    ModelfleetModule,
    from_iotedge,
    manifest_of,
    parse_manifest_file,
    to_iotedge,
)
from tests.deployment._factories import manifest, modelfleet_module

DATA = Path(__file__).parent / "data"
SCHEMA = rapidjson.Validator((DATA / "iothub-edge-deployment-content.schema.json").read_text())
DOCS = (Path(__file__).parents[2] / "docs" / "manifest.md").read_text()


def accepted_by_iot_hub(content: dict) -> bool:
    try:
        SCHEMA(json.dumps(content))
    except rapidjson.ValidationError:
        return False
    return True


def _file(name: str) -> Manifest:
    return manifest_of(parse_manifest_file(json.loads((DATA / "iotedge" / name).read_text())))


def test_the_schema_has_teeth() -> None:
    assert accepted_by_iot_hub(_file("base-simulated-sensor.json").to_json_dict())
    assert not accepted_by_iot_hub(manifest())  # modelfleet's own: process runtime, no system modules
    assert not accepted_by_iot_hub(_file("base-env-and-module-twins.json").to_json_dict())  # a null env value
    assert not accepted_by_iot_hub(_file("template-create-options-objects.json").to_json_dict())


@pytest.mark.parametrize("name", sorted(p.name for p in (DATA / "iotedge").glob("*.json")))
def test_every_manifest_exports_as_content_iot_hub_accepts(name: str) -> None:
    source = _file(name)

    exported = to_iotedge(source, layered=name.startswith("layered"), registry="registry.local:5000")

    assert accepted_by_iot_hub(exported), name
    assert set(from_iotedge(Manifest.model_validate(exported)).modules) == set(source.modules)


def test_a_modelfleet_module_exports_as_docker_and_imports_back_unchanged() -> None:
    source = Manifest.model_validate(
        manifest({"iris": modelfleet_module(), "probe": modelfleet_module("modules/probe")}, iris={"t": 1})
    )

    exported = to_iotedge(source, registry="registry.local:5000")

    iris = exported["modulesContent"]["$edgeAgent"]["properties.desired"]["modules"]["iris"]
    assert iris["type"] == "docker"
    assert iris["settings"]["image"] == "registry.local:5000/modules/iris-svc@sha256:" + "ab" * 32
    assert json.loads(iris["settings"]["createOptions"])["HostConfig"]["PortBindings"] == {
        "5001/tcp": [{"HostPort": "5001"}]
    }
    assert list(exported["modulesContent"])[:2] == ["$edgeAgent", "$edgeHub"]
    back = from_iotedge(Manifest.model_validate(exported))
    assert all(isinstance(m, ModelfleetModule) for m in back.modules.values())
    assert _modules(back) == _modules(source)
    assert back.modules_content.module_twins["iris"].desired == {"t": 1}


def _modules(parsed: Manifest) -> dict:
    return {
        name: module.model_dump(by_alias=True, exclude_unset=True) for name, module in parsed.modules.items()
    }


def test_the_documented_deployment_exports_as_iot_hub_content() -> None:
    blocks = [json.loads(b) for b in re.findall(r"```json\n(.*?)```", DOCS, re.S)]
    documented = next(b for b in blocks if "fleet" in b and "content" in b)

    exported = to_iotedge(Manifest.model_validate(documented["content"]))

    assert accepted_by_iot_hub(exported)
    assert from_iotedge(Manifest.model_validate(exported)).modules.keys() == {"iris", "camera"}


def test_template_create_options_are_written_as_chunked_strings() -> None:
    exported = to_iotedge(_file("template-create-options-objects.json"))

    hub = exported["modulesContent"]["$edgeAgent"]["properties.desired"]["systemModules"]["edgeHub"]
    assert json.loads(hub["settings"]["createOptions"])["HostConfig"]["PortBindings"]["443/tcp"]


def test_a_module_built_as_an_image_exports_as_that_image_with_credential_placeholders() -> None:
    image = "registry.local:5000/images/iris-svc@sha256:" + "c" * 64
    module = modelfleet_module(
        image=image, createOptions={"HostConfig": {"Memory": 268435456}}, gpu="preferred"
    )
    raw = manifest({"iris": module})
    raw["modulesContent"]["$edgeAgent"]["properties.desired"]["runtime"] = {
        "type": "docker",
        "settings": {
            "registryCredentials": {
                "team": {
                    "address": "other.local",
                    "username": "$modelfleet-sealed",
                    "password": "$modelfleet-sealed",
                }
            }
        },
    }
    source = Manifest.model_validate(raw)

    exported = to_iotedge(source, registry="registry.local:5000")

    assert accepted_by_iot_hub(exported)
    desired = exported["modulesContent"]["$edgeAgent"]["properties.desired"]
    settings = desired["modules"]["iris"]["settings"]
    assert settings["image"] == image
    create = json.loads(settings["createOptions"])
    assert create["HostConfig"] == {"Memory": 268435456, "PortBindings": {"5001/tcp": [{"HostPort": "5001"}]}}
    assert create["ExposedPorts"] == {"5001/tcp": {}}
    logins = desired["runtime"]["settings"]["registryCredentials"]
    assert logins["team"] == {
        "address": "other.local",
        "username": "$CONTAINER_REGISTRY_USERNAME_TEAM",
        "password": "$CONTAINER_REGISTRY_PASSWORD_TEAM",
    }
    assert logins["registrylocal5000"] == {
        "address": "registry.local:5000",
        "username": "$CONTAINER_REGISTRY_USERNAME_REGISTRYLOCAL5000",
        "password": "$CONTAINER_REGISTRY_PASSWORD_REGISTRYLOCAL5000",
    }
    assert "$modelfleet-sealed" not in json.dumps(exported)
    back = from_iotedge(Manifest.model_validate(exported))
    assert back.modules["iris"].model_dump(by_alias=True, exclude_unset=True) == source.modules[
        "iris"
    ].model_dump(by_alias=True, exclude_unset=True)
