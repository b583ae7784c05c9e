"""Module faults on demand: a module that never becomes ready, and one that crashes after N
requests. Each ends in exactly the reported states a real device would publish."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from modules import ConfigError
from simulator import FleetDescription, HardwareProfile, load_fleet_file, parse_fault, run_scenario
from simulator._scenario import Scenario
from tests.simulator._documents import DIGEST_1, DIGEST_2, document

FAST_RETRIES = {"retry_base_s": 0.2, "retry_max_s": 0.5}


async def test_never_ready_update_fails_with_its_reason_and_the_old_version_serves(sim_fleet) -> None:  # type: ignore[no-untyped-def]
    fleet = await sim_fleet(6, agent_settings=FAST_RETRIES)
    for device in fleet.devices:
        device.runtime.ready_timeout_s = 0.3
    await fleet.deploy(document(1, fleet=fleet.topics.fleet))
    assert (await fleet.converged("iris", 1, timeout=30)).counts == {"applied": 6}

    step = parse_fault("do=never-ready,module=scorer,share=50")
    assert await run_scenario(fleet, Scenario(steps=[step])) != []
    stuck = {d.device_id for d in fleet.devices if "scorer" in d.runtime.faults.never_ready}
    assert len(stuck) == 3

    await fleet.deploy(document(2, DIGEST_2, fleet=fleet.topics.fleet))
    result = await fleet.converged("iris", 2, timeout=30)
    assert set(result.devices("failed")) == stuck
    assert set(result.devices("applied")) == {d.device_id for d in fleet.devices} - stuck
    for device_id in stuck:
        report = fleet.report(device_id)
        assert report is not None
        seen = report.deployments["iris"]
        assert seen.version == 2 and "not ready after 0.3s" in (seen.reason or "")
        module = report.modules["scorer"]
        # the previous version keeps serving, with the reason the update did not happen
        assert (module.digest, module.status, module.health) == (DIGEST_1, "running", "healthy")
        assert "not ready after 0.3s" in (module.last_error or "")
        assert fleet.device(device_id).runtime.running_digests() == {"scorer": DIGEST_1}
        assert fleet.device(device_id).serve("scorer", 2) == 2


async def test_never_ready_on_a_first_start_fails_the_module(sim_fleet) -> None:  # type: ignore[no-untyped-def]
    description = FleetDescription(
        count=4,
        profiles=[
            HardwareProfile(name="stuck", share=50, never_ready=["scorer"], ready_timeout_s=0.2),
            HardwareProfile(name="fine", share=50),
        ],
    )
    fleet = await sim_fleet(4, profiles=description.profile_for(), agent_settings=FAST_RETRIES)
    stuck = {d.device_id for d in fleet.devices if d.profile.name == "stuck"}
    assert len(stuck) == 2
    await fleet.deploy(document(1, fleet=fleet.topics.fleet))
    result = await fleet.converged("iris", 1, timeout=30)
    assert set(result.devices("failed")) == stuck and len(result.devices("applied")) == 2
    for device_id in stuck:
        report = fleet.report(device_id)
        assert report is not None
        assert report.modules["scorer"].status == "failed"
        assert "not ready after 0.2s" in (report.deployments["iris"].reason or "")
        assert fleet.device(device_id).serve("scorer") == 0


async def test_crash_after_n_requests_backs_off_then_restarts(sim_fleet) -> None:  # type: ignore[no-untyped-def]
    fleet = await sim_fleet(3)
    await fleet.deploy(document(1, fleet=fleet.topics.fleet))
    assert (await fleet.converged("iris", 1, timeout=30)).counts == {"applied": 3}
    device = fleet.device(1)
    device.runtime.restart_delay_s = 0.2
    step = parse_fault("do=crash-after,module=scorer,requests=3,devices=sim-0001")
    await run_scenario(fleet, Scenario(steps=[step]))

    assert device.serve("scorer", 2) == 2
    assert device.serve("scorer", 5) == 0  # the third request brings it down; nothing answers after
    assert device.runtime.requests_refused == 4

    def state(status: str, restarts: int):  # type: ignore[no-untyped-def]
        report = fleet.report(device.device_id)
        module = report.modules["scorer"] if report is not None else None
        ok = module is not None and (module.status, module.restart_count) == (status, restarts)
        return module if ok else None

    down = await fleet.wait_for(lambda: state("backoff", 0), timeout=10, what="backoff")
    assert down.exit_code == 1 and down.health == "unknown"
    assert down.next_restart_at - down.exited_at == timedelta(seconds=0.2)
    up = await fleet.wait_for(lambda: state("running", 1), timeout=10, what="restarted")
    assert up.health == "healthy"
    # a fresh instance survives two requests again; the second crash backs off twice as long
    assert device.serve("scorer", 3) == 2
    again = await fleet.wait_for(lambda: state("backoff", 1), timeout=10, what="second backoff")
    assert again.next_restart_at - again.exited_at == timedelta(seconds=0.4)
    await fleet.wait_for(lambda: state("running", 2), timeout=10, what="second restart")
    # the deployment stays applied on it; the other devices never noticed
    assert fleet.outcomes("iris", 1) == {d.device_id: "applied" for d in fleet.devices}
    assert fleet.report("sim-0000").modules["scorer"].restart_count == 0


async def test_crash_after_n_requests_from_a_fleet_file_under_traffic(tmp_path: Path, sim_fleet) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "fleet.yaml").write_text(
        "count: 4\n"
        "profiles:\n"
        "  - {name: leaky, share: 25, requests_per_s: 50, crash_after_requests: {scorer: 5}}\n"
        "  - {name: fine, share: 75, requests_per_s: 50}\n"
    )
    description = load_fleet_file(tmp_path / "fleet.yaml")
    fleet = await sim_fleet(description.count, profiles=description.profile_for())
    leaky = [d for d in fleet.devices if d.profile.name == "leaky"]
    assert len(leaky) == 1
    for device in fleet.devices:
        device.runtime.restart_delay_s = 0.1
    await fleet.deploy(document(1, fleet=fleet.topics.fleet))
    await fleet.converged("iris", 1, timeout=30)

    def crashed_twice():  # type: ignore[no-untyped-def]
        report = fleet.report(leaky[0].device_id)
        module = report.modules.get("scorer") if report is not None else None
        return module if module is not None and module.restart_count >= 2 else None

    module = await fleet.wait_for(crashed_twice, timeout=20, what="two restarts under traffic")
    assert module.exit_code == 1
    for device in fleet.devices:
        if device is not leaky[0]:
            report = fleet.report(device.device_id)
            assert report is not None and report.modules["scorer"].restart_count == 0
            assert report.modules["scorer"].status == "running"


def test_module_fault_steps_parse() -> None:
    step = parse_fault("do=crash-after,module=scorer,requests=7,site=b")
    assert (step.do, step.requests, step.where) == ("crash-after", 7, {"site": "b"})
    assert parse_fault("do=never-ready,module=scorer").do == "never-ready"
    for bad in ("do=never-ready", "do=crash-after,module=m,requests=0"):
        with pytest.raises(ConfigError, match="--fault"):
            parse_fault(bad)


async def test_the_progress_line_reads_each_new_report_once(sim_fleet) -> None:  # type: ignore[no-untyped-def]
    from simulator.cli import Progress

    fleet = await sim_fleet(4)
    progress = Progress()
    assert progress.line(fleet) == "4/4 devices online"
    fleet.device(2).fail_every_start("scorer")
    await fleet.deploy(document(1, fleet=fleet.topics.fleet))
    await fleet.converged("iris", 1, timeout=30)
    assert progress.line(fleet) == "4/4 devices online | iris: v1 applied 3, v1 failed 1"
    fleet.device(3).go_offline()
    assert progress.line(fleet) == "3/4 devices online | iris: v1 applied 3, v1 failed 1"
