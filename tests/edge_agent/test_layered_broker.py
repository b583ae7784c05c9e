"""A layered deployment over a base one, on a running agent with a real Mosquitto: the agent
runs the merged module set, and each module's twin is the base's with the layer's parts over it.
(The module runtime is the in-memory fake: what is under test is selection, merging and twins.)"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from edge_agent._executor import twin_dir
from tests._services import Service
from tests.deployment._factories import document, manifest, modelfleet_module
from tests.edge_agent._fleet import publish, wait_for
from tests.edge_agent.test_reconcile import DIGEST_1, DIGEST_2, _wire
from tests.edge_agent.test_trust_broker import _start

pytestmark = [pytest.mark.services, pytest.mark.timeout(60)]


async def test_a_layer_over_a_base_runs_the_merged_modules_and_twins(
    tmp_path: Path, mosquitto: Service
) -> None:
    fleet = "layers" + os.urandom(3).hex()
    agent, runtime = await _start(tmp_path, mosquitto, fleet)
    try:
        base = document(
            name="base",
            version=1,
            fleet=fleet,
            content=manifest(
                {"iris": modelfleet_module("modules/iris", DIGEST_1)},
                iris={"threshold": 0.5, "mode": "fast"},
            ),
        )
        layer = document(
            name="extras",
            version=1,
            fleet=fleet,
            layered=True,
            priority=10,
            content={
                "modulesContent": {
                    "$edgeAgent": {
                        "properties.desired.modules.helper": modelfleet_module("modules/helper", DIGEST_2),
                    },
                    "iris": {"properties.desired.threshold": 0.8},
                }
            },
        )
        publish(mosquitto.port, agent.topics.deployment("base"), _wire(base))
        publish(mosquitto.port, agent.topics.deployment("extras"), _wire(layer))
        await wait_for(lambda: {"iris", "helper"} <= set(runtime.records), 20, "the merged module set")
        assert runtime.records["helper"].digest == DIGEST_2
        folder = twin_dir(agent.config.data_dir, "iris")
        assert folder is not None
        await wait_for(
            lambda: (
                (folder / "desired.json").exists()
                and json.loads((folder / "desired.json").read_text()) == {"threshold": 0.8, "mode": "fast"}
            ),
            20,
            "the merged twin",
        )
        await wait_for(
            lambda: all(
                agent.deployments.get(n) and agent.deployments[n].outcome == "applied"
                for n in ("base", "extras")
            ),
            20,
            "both applied",
        )
    finally:
        await agent.stop()
