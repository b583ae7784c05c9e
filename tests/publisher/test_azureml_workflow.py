"""The seed's Azure ML v1 deployment notebook, with only its imports and workspace changed, against
the embedded hub and real agents: once on this workstation (LocalWebservice), once on the fleet
(AciWebservice with auth: keys reach only the enrolled devices)."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import os
import re
import shutil
import socket
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import requests
from onnx import TensorProto, helper

from modules.hub import EmbeddedHub
from publisher import Module, azureml
from publisher import _local_service as local
from tests._services import Service as RealService
from tests.edge_agent._fleet import wait_for
from tests.publisher._harness import Fleet, acli, running_digests, settled_status

SEED = Path(__file__).resolve().parent / "azureml_seed"
WEIGHTS = np.arange(1, 11, dtype=np.float32) * 10.0
BIAS = 150.0
SAMPLE = [[1, 2, 3, 4, 5, 6, 7, 8, 9, 10], [10, 9, 8, 7, 6, 5, 4, 3, 2, 1]]
EXPECTED = [float(np.dot(row, WEIGHTS) + BIAS) for row in SAMPLE]


def _regression_model(path: Path) -> None:
    """A linear regression over the diabetes data's 10 features, as the seed's Ridge model, in ONNX."""
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["X", "W"], ["XW"]),
            helper.make_node("Add", ["XW", "B"], ["variable"]),
        ],
        "ridge",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, [None, 10])],
        [helper.make_tensor_value_info("variable", TensorProto.FLOAT, [None, 1])],
        [
            helper.make_tensor("W", TensorProto.FLOAT, [10, 1], WEIGHTS.tolist()),
            helper.make_tensor("B", TensorProto.FLOAT, [1], [BIAS]),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, path)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def seed_workflow(ws: Any, deployment_config: Any) -> None:
    """The seed's code: from `Model.register` to `model.delete()`, unchanged but for the imports
    (`from publisher.azureml import ...`) and the deployment configuration, which is a parameter
    here so that one function serves both the local and the ACI run."""
    from publisher.azureml import InferenceConfig, Model, Webservice

    model = Model.register(
        model_path="sklearn_regression_model.pkl",
        model_name="sklearn_regression_model.pkl",
        tags={"area": "diabetes", "type": "regression"},
        description="Ridge regression",
        workspace=ws,
    )
    inference_config = InferenceConfig(
        source_directory=".", runtime="python", entry_script="score.py", conda_file="myenv.yml"
    )
    service = Model.deploy(ws, "myservice", [model], inference_config, deployment_config)
    service.wait_for_deployment(show_output=True)
    print(service.state)
    headers = {"Content-Type": "application/json"}
    if service.auth_enabled:
        headers["Authorization"] = "Bearer " + service.get_keys()[0]
    test_sample = json.dumps({"data": [[1, 2, 3, 4, 5, 6, 7, 8, 9, 10], [10, 9, 8, 7, 6, 5, 4, 3, 2, 1]]})
    response = requests.post(service.scoring_uri, data=test_sample, headers=headers)
    print(response.status_code, response.elapsed, response.json())
    new_model = Model.register(
        model_path="sklearn_regression_model.pkl",
        model_name="sklearn_regression_model.pkl",
        tags={"key": "0.1"},
        description="test",
        workspace=ws,
    )
    service = Webservice(name="myservice", workspace=ws)
    service.update(models=[new_model])
    print(service.state)
    print(service.get_logs())
    service.delete()
    model.delete()


@contextlib.asynccontextmanager
async def _hub_and_project(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[Any, Fleet]]:
    """The embedded hub, a workspace on it, agents' fleet harness, and the seed's project folder
    (score.py, myenv.yml, the model file) as the current folder, as a notebook's."""
    hub = EmbeddedHub(tmp_path / "hub", registry_port=0, mqtt_port=_free_port())
    await hub.start()
    try:
        assert hub.registry_url and hub.mqtt_url
        ws = azureml.Workspace.create(
            tmp_path / "ws", registry=hub.registry_url, hub=hub.mqtt_url, fleet="seed" + os.urandom(3).hex()
        )
        project = tmp_path / "project"
        project.mkdir()
        shutil.copy(SEED / "score.py", project / "score.py")
        shutil.copy(SEED / "myenv.yml", project / "myenv.yml")
        _regression_model(project / "sklearn_regression_model.pkl")
        monkeypatch.chdir(project)
        registry = RealService(hub.registry_url, int(hub.registry_url.rsplit(":", 1)[1]), tmp_path / "hub")
        broker = RealService(hub.mqtt_url, hub.broker.port, tmp_path / "hub")
        f = Fleet(tmp_path, ws, registry, broker)
        try:
            yield ws, f
        finally:
            await f.stop_all()
    finally:
        await hub.stop()


async def _run_printing(fn: Callable[[], None]) -> list[str]:
    out = io.StringIO()

    def run() -> None:
        with contextlib.redirect_stdout(out):
            fn()

    await asyncio.to_thread(run)
    return [line for line in out.getvalue().splitlines() if line.strip()]


def _check_package_notes(caplog: pytest.LogCaptureFixture) -> None:
    notes = [r.getMessage() for r in caplog.records if r.name == "modelfleet.package"]
    assert any("azureml-defaults" in n and "not installed on devices" in n for n in notes), notes
    assert any("python=3.6.2" in n and "which no device has" in n for n in notes), notes


def _check_answer_line(line: str) -> None:
    match = re.fullmatch(r"200 (\d+:\d\d:\d\d\.\d+) (\[.*\])", line)
    assert match, line
    assert json.loads(match.group(2)) == pytest.approx(EXPECTED)


async def test_seed_workflow_on_a_local_webservice(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="modelfleet.package")
    async with _hub_and_project(tmp_path, monkeypatch) as (ws, _fleet):
        port = _free_port()
        config = azureml.LocalWebservice.deploy_configuration(port=port)
        lines = await _run_printing(lambda: seed_workflow(ws, config))

        # wait_for_deployment(show_output=True), then every print: state, the answer, state, logs
        assert any(f"Local webservice is running at http://127.0.0.1:{port}" in line for line in lines), lines
        printed = [
            line for line in lines if not line.startswith(("packaged", "Checking", "Local webservice"))
        ]
        assert printed[0] == "Healthy", lines
        _check_answer_line(printed[1])
        assert printed[2] == "Healthy", lines  # update() waits for the new version on a local service
        logs = "\n".join(printed[3:])
        assert "serving myservice:2" in logs and "starting myservice:2" in logs, logs
        _check_package_notes(caplog)

        # delete() stopped the host and removed its record; the model version is gone
        assert local.names(ws) == []
        assert not local.port_in_use(port)
        assert [m.version for m in await azureml.Model.list_async(ws, "sklearn_regression_model.pkl")] == [2]
        module = await Module.get_async(ws, "myservice", 2)
        assert [m.version for m in module.spec.models] == [2]
        assert module.spec.requirements == ["scikit-learn", "inference-schema[numpy-support]", "joblib"]


async def test_seed_workflow_on_aci_with_auth_reaches_enrolled_agents(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="modelfleet.package")
    caplog.set_level(logging.WARNING, logger="modelfleet.azureml")
    async with _hub_and_project(tmp_path, monkeypatch) as (ws, f):
        agents = [await f.start(d, {"address": "127.0.0.1", "site": "lab"}) for d in ("edge-1", "edge-2")]
        for agent in agents:
            await wait_for(lambda a=agent: a.transport and a.transport.connected, what="agent online")
            # enrolment: the operator binds the key read on the device to its id
            code, _, err = await acli(
                ws, "device", "enroll", agent.device_id, "--key", agent.device_key.public
            )
            assert code == 0, err
        await settled_status(ws, agents)  # both report (tags, key) before the deployment counts them
        config = azureml.AciWebservice.deploy_configuration(cpu_cores=1, memory_gb=1, auth_enabled=True)
        assert config.settings.auth and config.resources is not None
        assert (config.resources.cpus, config.resources.memory_mb) == (1, 1024)

        lines = await _run_printing(lambda: seed_workflow(ws, config))
        printed = [line for line in lines if not line.startswith(("packaged", "myservice v", "Checking"))]
        assert printed[0] == "Healthy", lines
        _check_answer_line(printed[1])
        assert printed[2] == "Healthy", lines  # update() returns once the new version is applied
        logs = "\n".join(printed[3:])
        assert "== edge-1 / myservice ==" in logs and "== edge-2 / myservice ==" in logs, logs
        _check_package_notes(caplog)

        # delete() removed the modules from both devices
        for agent in agents:
            await wait_for(
                lambda a=agent: running_digests(a) == {} and not a.executor.running, what="removed"
            )
        assert [m.version for m in await azureml.Model.list_async(ws, "sklearn_regression_model.pkl")] == [2]
