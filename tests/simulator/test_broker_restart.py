"""A scenario step restarts the test's own Mosquitto: every device loses its connection and the
broker comes back empty (no persistence). The fleet reconnects, re-reports, and converges on the
next deployment; what the broker carries afterwards is true."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

from simulator import load_scenario, run_scenario
from tests._services import free_port, run_mosquitto_at
from tests.simulator._documents import DIGEST_1, DIGEST_2, document


async def test_a_scenario_restarts_mosquitto_and_the_fleet_converges(tmp_path: Path, sim_fleet) -> None:  # type: ignore[no-untyped-def]
    port = free_port()
    with contextlib.ExitStack() as stack:
        first = stack.enter_context(run_mosquitto_at(tmp_path / "broker-1", port))
        restarts: list[int] = []

        async def restart() -> None:
            await asyncio.to_thread(stack.close)  # Mosquitto stops: every connection drops
            restarts.append(port)
            await asyncio.to_thread(
                stack.enter_context, run_mosquitto_at(tmp_path / f"broker-{len(restarts) + 1}", port)
            )

        fleet = await sim_fleet(
            20,
            hub=first.url,
            restart_broker=restart,
            agent_settings={"retry_base_s": 0.2, "retry_max_s": 0.5},
        )
        await fleet.deploy(document(1, fleet=fleet.topics.fleet))
        assert (await fleet.converged("iris", 1, timeout=30)).counts == {"applied": 20}
        seq_before = {d.device_id: fleet.report(d.device_id).seq for d in fleet.devices}

        (tmp_path / "restart.yaml").write_text("steps:\n  - {at: 0, do: restart-broker}\n")
        done = await run_scenario(fleet, load_scenario(tmp_path / "restart.yaml"))
        assert [d["step"] for d in done] == ["restart-broker"] and restarts == [port]
        # the new broker knew nothing: every device reconnected, said it is online and re-reported
        await fleet.reported_again(timeout=60)
        await fleet.wait_for(
            lambda: all(fleet.presence(d.device_id) for d in fleet.devices), timeout=30, what="presence"
        )
        for device in fleet.devices:
            report = fleet.report(device.device_id)
            assert report is not None and report.seq > seq_before[device.device_id]
            # still running what it had, and saying so: the lost retained document removed nothing
            assert report.deployments["iris"].outcome == "applied"
            module = report.modules["scorer"]
            assert (module.digest, module.health) == (DIGEST_1, "healthy")
            assert device.runtime.running_digests() == {"scorer": DIGEST_1}

        await fleet.deploy(document(2, DIGEST_2, fleet=fleet.topics.fleet))
        assert (await fleet.converged("iris", 2, timeout=60)).counts == {"applied": 20}
        assert all(d.runtime.running_digests() == {"scorer": DIGEST_2} for d in fleet.devices)
        await fleet.stop()


async def test_restart_broker_in_memory_forgets_retained_and_the_fleet_reports_again(sim_fleet) -> None:  # type: ignore[no-untyped-def]
    fleet = await sim_fleet(5)
    await fleet.deploy(document(1, fleet=fleet.topics.fleet))
    await fleet.converged("iris", 1, timeout=30)
    await fleet.restart_broker(down_s=0.1)
    await fleet.reported_again(timeout=30)
    assert all(fleet.report(d.device_id).deployments["iris"].outcome == "applied" for d in fleet.devices)
