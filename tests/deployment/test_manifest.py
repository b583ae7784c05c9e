from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from modules.deployment import DockerModule, Manifest, ModelfleetModule
from tests.deployment._factories import manifest, modelfleet_module

DATA = Path(__file__).parent / "data"


@pytest.mark.parametrize("filename", ["iotedge-deployment.json", "iotedge-e2e-deployment.json"])
def test_real_iot_edge_manifest_round_trips_unchanged(filename: str) -> None:
    original = json.loads((DATA / filename).read_text())

    parsed = Manifest.model_validate(original)

    assert parsed.to_json_dict() == original
    assert Manifest.model_validate_json(json.dumps(original)).to_json_dict() == original


def test_iot_edge_manifest_fields_are_typed() -> None:
    parsed = Manifest.model_validate_json((DATA / "iotedge-deployment.json").read_text())

    filter_module = parsed.modules["filtermodule"]
    assert isinstance(filter_module, DockerModule)
    assert filter_module.restart_policy == "always"
    assert filter_module.startup_order == 1
    assert filter_module.env is not None and filter_module.env["tempLimit"].value == "100"
    assert filter_module.settings.create_options_dict() == {}
    hub = parsed.modules_content.edge_hub
    assert hub is not None and hub.desired.routes is not None
    assert set(hub.desired.routes) == {"sensorToFilter", "filterToIoTHub"}
    system = parsed.agent.system_modules or {}
    assert system["edgeHub"].settings.create_options_dict()["HostConfig"]["PortBindings"]


def test_per_module_desired_properties_are_kept_as_module_twins() -> None:
    raw = manifest(iris={"threshold": 0.8, "labels": ["setosa", "virginica"]})

    parsed = Manifest.model_validate(raw)

    assert parsed.modules_content.module_twins["iris"].desired == {
        "threshold": 0.8,
        "labels": ["setosa", "virginica"],
    }
    assert parsed.to_json_dict() == raw


def test_modelfleet_module_references_a_package_by_digest() -> None:
    raw = manifest(
        {"iris": modelfleet_module(resources={"cpus": 1.5, "gpus": 1}, healthProbe={"path": "/ready"})}
    )

    parsed = Manifest.model_validate(raw)

    module = parsed.modules["iris"]
    assert isinstance(module, ModelfleetModule)
    assert module.settings.module == "modules/iris-svc"
    assert module.settings.execution_providers == ["cuda", "cpu"]
    assert module.settings.resources is not None and module.settings.resources.gpus == 1
    assert module.settings.health_probe is not None and module.settings.health_probe.path == "/ready"
    assert parsed.to_json_dict() == raw


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("digest", "sha256:short"),
        ("digest", "md5:" + "0" * 32),
        ("module", "iris-svc"),
        ("port", 0),
        ("executionProviders", ["quantum"]),
    ],
)
def test_modelfleet_module_with_bad_settings_is_refused(field: str, value: object) -> None:
    with pytest.raises(ValidationError):
        Manifest.model_validate(manifest({"iris": modelfleet_module(**{field: value})}))


@pytest.mark.parametrize(
    ("field", "value"),
    [("status", "paused"), ("restartPolicy", "sometimes"), ("imagePullPolicy", "always"), ("type", "vm")],
)
def test_module_with_unknown_policy_or_type_is_refused(field: str, value: str) -> None:
    module = modelfleet_module()
    module[field] = value
    with pytest.raises(ValidationError):
        Manifest.model_validate(manifest({"iris": module}))


def test_manifest_without_edge_agent_is_refused() -> None:
    with pytest.raises(ValidationError):
        Manifest.model_validate(
            {"modulesContent": {"$edgeHub": {"properties.desired": {"schemaVersion": "1.1"}}}}
        )
