"""Azure ML v1 names and signatures without a fleet: configurations, conda files, Model ids."""

from __future__ import annotations

import inspect
import logging
from pathlib import Path

import pytest

from modules import InvalidPackageError, ModelfleetError
from publisher import Model as PublisherModel
from publisher import azureml
from publisher._package import conda_python_specifier, read_conda_pip_section, read_requirements

SEED = Path(__file__).resolve().parent / "azureml_seed"


def test_the_seed_conda_file_keeps_the_scripts_packages_and_says_what_it_left_out(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="modelfleet.package")
    notes: list[str] = []
    assert read_conda_pip_section(SEED / "myenv.yml", notes) == [
        "scikit-learn",
        "inference-schema[numpy-support]",
        "joblib",
    ]
    assert len(notes) == 2 and all("\n" not in n for n in notes)
    assert "python=3.6.2" in notes[0] and "agent's Python" in notes[0]
    assert "azureml-defaults" in notes[1]
    assert [r.getMessage() for r in caplog.records] == [f"note: {n}" for n in notes]


@pytest.mark.parametrize(
    ("pin", "specifier"),
    [
        ("python", None),
        ("python=3.6.2", "==3.6.2.*"),
        ("python=3.8", "==3.8.*"),
        ("python==3.8.10", "==3.8.10"),
        ("python>=3.8,<3.10", "<3.10,>=3.8"),
        ("python 3.7.*", "==3.7.*"),
        ("conda-forge::python=3.11", "==3.11.*"),
        ("python=3.9.7=h12debd9_1", "==3.9.7.*"),
    ],
)
def test_conda_python_pins_read_as_conda_means_them(pin: str, specifier: str | None) -> None:
    parsed = conda_python_specifier(pin)
    assert (None if parsed is None else str(parsed)) == specifier


def test_a_python_2_pin_is_refused_and_a_met_pin_says_nothing(tmp_path: Path) -> None:
    env = tmp_path / "env.yml"
    env.write_text("dependencies:\n  - python=2.7\n  - pip:\n    - numpy\n")
    with pytest.raises(InvalidPackageError, match="Python 2"):
        read_conda_pip_section(env)
    env.write_text("dependencies:\n  - python>=3.8\n  - pip:\n    - azureml-core==1.48\n    - numpy\n")
    notes: list[str] = []
    assert read_conda_pip_section(env, notes) == ["numpy"]
    assert len(notes) == 1 and "azureml-core==1.48" in notes[0]
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("azureml-inference-server-http\nAzureML_Defaults>=1.0\npandas\n")
    assert read_requirements(requirements) == ["pandas"]


def test_aci_configuration_maps_resources_and_auth_and_notes_the_rest(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="modelfleet.azureml")
    config = azureml.AciWebservice.deploy_configuration(cpu_cores=1, memory_gb=1, auth_enabled=True)
    assert config.settings.auth and config.settings.target == "*"
    assert config.resources is not None and (config.resources.cpus, config.resources.memory_mb) == (1, 1024)
    assert config.notes == []
    config = azureml.AciWebservice.deploy_configuration(
        cpu_cores=0.5,
        memory_gb=0.5,
        tags={"a": "b"},
        location="westeurope",
        dns_name_label="svc",
        enable_app_insights=True,
        target="tags.site = 'a'",
        port=6001,
    )
    assert not config.settings.auth and config.settings.port == 6001
    assert config.settings.target == "tags.site = 'a'"
    assert config.resources is not None and config.resources.memory_mb == 512
    assert len(config.notes) == 3 and any("location, dns_name_label" in n for n in config.notes)
    assert len(caplog.records) == 3
    with pytest.raises(ModelfleetError, match="plain HTTP"):
        azureml.AciWebservice.deploy_configuration(ssl_enabled=True)
    with pytest.raises(ModelfleetError, match="not_a_setting"):
        azureml.AciWebservice.deploy_configuration(not_a_setting=1)


def test_aks_configuration_maps_probe_timeout_gpus_and_defaults_to_auth() -> None:
    config = azureml.AksWebservice.deploy_configuration(
        cpu_cores=1,
        cpu_cores_limit=2,
        memory_gb=2,
        gpu_cores=1,
        scoring_timeout_ms=5000,
        period_seconds=5,
        failure_threshold=4,
        autoscale_enabled=True,
        num_replicas=3,
    )
    assert config.settings.auth  # AKS's default
    assert config.resources is not None and (config.resources.cpus, config.resources.gpus) == (2, 1)
    assert config.scoring is not None and config.scoring.timeout_ms == 5000
    assert config.health_probe is not None
    assert (config.health_probe.period_s, config.health_probe.failure_threshold) == (5, 4)
    assert any("autoscale_enabled, num_replicas" in n for n in config.notes)
    assert any("cpu_cores_limit" in n for n in config.notes)
    assert azureml.AksWebservice.deploy_configuration(
        token_auth_enabled=True, auth_enabled=False
    ).settings.auth


def test_inference_config_takes_azures_arguments() -> None:
    config = azureml.InferenceConfig("score.py", "python", "env.yml", source_directory=".", enable_gpu=True)
    assert (config.entry_script, config.conda_file, config.source_directory) == ("score.py", "env.yml", ".")
    assert config.providers == ["cuda", "cpu"]
    env = azureml.Environment.from_pip_requirements("env", "requirements.txt")
    config = azureml.InferenceConfig(entry_script="score.py", environment=env, base_image="mcr/x")
    assert config.requirements == Path("requirements.txt") and len(config.notes) == 1
    with pytest.raises(ModelfleetError, match="spark-py"):
        azureml.InferenceConfig(entry_script="score.py", runtime="spark-py")
    with pytest.raises(ModelfleetError, match="not both"):
        azureml.InferenceConfig(entry_script="score.py", conda_file="a.yml", environment=env)


def test_signatures_follow_azure_ml_v1() -> None:
    deploy = list(inspect.signature(azureml.Model.deploy).parameters)
    assert deploy[:8] == [
        "workspace",
        "name",
        "models",
        "inference_config",
        "deployment_config",
        "deployment_target",
        "overwrite",
        "show_output",
    ]
    assert list(inspect.signature(PublisherModel.deploy).parameters)[5] == "deployment_target"  # type: ignore[attr-defined]
    assert list(inspect.signature(PublisherModel.__init__).parameters)[:4] == [
        "self",
        "workspace",
        "name",
        "id",
    ]
    register = inspect.signature(PublisherModel.register_async).parameters
    assert {"model_framework", "model_framework_version", "tags", "description"} <= set(register)
    assert azureml.Model.Framework.ONNX == "Onnx"
    assert list(inspect.signature(azureml.LocalWebservice.deploy_configuration).parameters) == ["port"]
    with pytest.raises(ModelfleetError, match="NAME:VERSION"):
        PublisherModel(object(), id="iris")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="version="):
        PublisherModel(object(), "iris", 2)  # type: ignore[arg-type]
