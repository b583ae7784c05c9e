"""A fleet of simulated devices with a few real ones among them: the real ones pull the module
from a Distribution registry, run it as a process and answer /score with the ONNX model, all
under the same signed deployment and on the same broker as the simulated ones."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import aiohttp
import pytest

from simulator import SimulatorError, parse_fault
from simulator._scenario import apply
from tests._services import Service, free_port
from tests.edge_agent._fleet import EXAMPLES, SAMPLE, Publisher


async def test_twenty_simulated_devices_and_one_real_one_converge_and_the_real_one_scores(
    tmp_path: Path, mosquitto: Service, distribution: Service, sim_fleet
) -> None:  # type: ignore[no-untyped-def]
    # registering the model runs its own event loop: off this one
    publisher = await asyncio.to_thread(
        Publisher, tmp_path / "publisher", distribution.url, mosquitto.port, "simreal"
    )
    module = await publisher.package(EXAMPLES / "iris-service" / "score.py")
    fleet = await sim_fleet(
        21,
        hub=mosquitto.url,
        fleet=publisher.topics.fleet,
        trust=[publisher.public_key],
        key=publisher.key,
        real=lambda i: i == 7,
        real_settings={"registry": distribution.url, "port_base": 0},
    )
    (real,) = fleet.real_devices
    assert real.device_id == "sim-0007" and real.runtime is None
    assert sum(not d.real for d in fleet.devices) == 20

    port = free_port()
    await fleet.deploy(publisher.document("iris", 1, module, port))
    result = await fleet.converged("iris", 1, timeout=120)
    assert result.counts == {"applied": 21}

    # the real device runs the module as a process, pulled by digest, and reports it so
    report = fleet.report(real.device_id)
    assert report is not None
    scorer = report.modules["scorer"]
    assert (scorer.digest, scorer.status, scorer.health) == (module.digest, "running", "healthy")
    assert scorer.pid is not None
    url = f"http://127.0.0.1:{real.port(port)}/score"
    async with aiohttp.ClientSession() as session, session.post(url, data=json.dumps(SAMPLE)) as resp:
        assert resp.status == 200, await resp.text()
        answer = await resp.json()
    assert answer["predictions"] == ["setosa", "versicolor", "virginica"]

    # the simulated ones "run" the same digest, with no process behind it
    for device in fleet.devices:
        if not device.real:
            assert device.runtime.running_digests() == {"scorer": module.digest}
            assert fleet.report(device.device_id).modules["scorer"].pid is None

    # faults of the simulated runtime leave the real device alone, and say so when asked directly
    touched = await apply(fleet, parse_fault("do=unhealthy,module=scorer"))
    assert touched == 20
    with pytest.raises(SimulatorError, match="real device"):
        real.crash("scorer")
    await fleet.wait_for(
        lambda: (
            fleet.report(real.device_id).modules["scorer"].health == "healthy"
            and all(
                fleet.report(d.device_id).modules["scorer"].health == "unhealthy"
                for d in fleet.devices
                if not d.real
            )
        ),
        timeout=30,
        what="the simulated devices unhealthy, the real one healthy",
    )
