"""Faults from a scenario file, downloads at a device's bandwidth, a fleet from a description file,
and the timeline that records it all: each fault ends in exactly the reported state it should."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from modules import ConfigError
from simulator import (
    FleetDescription,
    load_fleet_file,
    load_scenario,
    parse_fault,
    run_scenario,
    share,
    spread,
)
from tests.simulator._documents import DIGEST_1, document

SCENARIO = """
name: faults on a tagged fleet
steps:
  - {at: 0, do: fail-start, module: scorer, where: {gpu: true}}
  - {at: 0, do: offline, devices: [sim-0001, sim-0004, sim-0007]}
  - {at: 0, do: corrupt-download, where: {site: b, gpu: false}}
  - {at: 0, do: cut-download, fraction: 0.5, where: {site: c, gpu: false}}
"""


async def test_scenario_faults_end_in_exactly_the_expected_reported_states(tmp_path: Path, sim_fleet) -> None:  # type: ignore[no-untyped-def]
    fleet = await sim_fleet(
        60,
        tags={"gpu": share(True, 30, otherwise=False), "site": spread("a", "b", "c")},
        agent_settings={"retry_base_s": 0.2, "retry_max_s": 0.5},
    )
    (tmp_path / "faults.yaml").write_text(SCENARIO)
    scenario = load_scenario(tmp_path / "faults.yaml")
    gpu = {d.device_id for d in fleet.devices if d.tags["gpu"]}
    away = {"sim-0001", "sim-0004", "sim-0007"}
    corrupted = {d.device_id for d in fleet.devices if d.tags == {"gpu": False, "site": "b"}} - away
    cut = {d.device_id for d in fleet.devices if d.tags == {"gpu": False, "site": "c"}} - away
    assert len(gpu) == 18 and not away & gpu and corrupted and cut

    timeline = fleet.timeline("iris", every_s=0.1)
    done = await run_scenario(fleet, scenario, timeline)
    touched = {d["step"].split(" [")[0]: d["devices"] for d in done}
    assert touched == {"fail-start scorer": 18, "offline": 3, "corrupt-download": 14, "cut-download": 14}
    await fleet.deploy(document(1, fleet=fleet.topics.fleet))
    result = await fleet.converged("iris", 1, timeout=60)

    # crash on start, on the tagged subset only: failed, with the module's reason
    assert set(result.devices("failed")) == gpu
    for device_id in gpu:
        seen = fleet.report(device_id).deployments["iris"]
        assert seen.outcome == "failed" and "init() raised" in (seen.reason or "")
    # offline devices: offline, and nothing of version 1 on them
    assert set(result.devices("offline")) == away
    assert all(fleet.device(d).runtime.running_digests() == {} for d in away)
    # a corrupted download is thrown away and fetched again; a cut one resumes: both end applied
    applied = set(result.devices("applied"))
    assert applied == {d.device_id for d in fleet.devices} - gpu - away
    for device_id in corrupted | cut:
        runtime = fleet.device(device_id).runtime
        assert runtime.downloads == 2 and runtime.running_digests() == {"scorer": DIGEST_1}
    reasons = timeline.failures()
    assert sum(reasons.values()) == 18

    # devices that come back online converge on what they missed
    for device_id in away:
        fleet.device(device_id).go_online()
    back = await fleet.converged("iris", 1, devices=sorted(away), timeout=60)
    assert back.counts == {"applied": 3}
    await timeline.stop()
    summary = timeline.summary()
    assert summary["final"]["healthy"] == 60 - 18 and summary["final"]["failed"] == 18
    assert summary["time_to"]["healthy"]["50%"] is not None
    assert summary["messages_per_device"]["median"] >= 1
    assert [e["what"].split(" [")[0] for e in summary["events"]] == [
        "fail-start scorer",
        "offline",
        "corrupt-download",
        "cut-download",
    ]
    json.dumps(summary)  # JSON for tools, as it is


async def test_a_download_runs_at_the_device_bandwidth_and_reports_its_progress(sim_fleet) -> None:  # type: ignore[no-untyped-def]
    description = FleetDescription.model_validate(
        {
            "count": 4,
            "profiles": [
                {"name": "fast", "share": 50, "bandwidth_mbps": 80, "module_mb": 4},
                {"name": "slow", "share": 50, "bandwidth_mbps": 8, "module_mb": 4, "disk_free_mb": 2},
            ],
        }
    )
    fleet = await sim_fleet(
        description.count,
        profiles=description.profile_for(),
        agent_settings={"retry_base_s": 0.2, "retry_max_s": 0.5},
    )
    fast = [d for d in fleet.devices if d.profile.name == "fast"]
    slow = [d for d in fleet.devices if d.profile.name == "slow"]
    assert len(fast) == len(slow) == 2
    timeline = fleet.timeline("iris", every_s=0.05)
    await fleet.deploy(document(1, fleet=fleet.topics.fleet))
    # the fast ones (4 MiB at 80 Mbit/s: about 0.4 s) apply; the slow ones' disk is too small
    await fleet.converged("iris", 1, devices=fast, timeout=30)
    await fleet.wait_for(
        lambda: all(
            "not enough disk space" in str(fleet.report(d.device_id).deployments.get("iris")) for d in slow
        ),
        timeout=30,
        what="the slow devices' full disks reported",
    )
    assert all(d.runtime.running_digests() == {} for d in slow)
    # room again: they download at their own bandwidth (about 4 s) and show it while they do
    for device in slow:
        device.free_disk(None)
    await fleet.wait_for(lambda: timeline.counts["downloading"] == 2, timeout=30, what="downloading")
    progress = [fleet.report(d.device_id).modules["scorer"].download for d in slow]
    assert all(p is not None and 0 < p.done_bytes < p.total_bytes == 4 * 2**20 for p in progress)
    result = await fleet.converged("iris", 1, timeout=30)
    assert result.counts == {"applied": 4}
    await timeline.stop()
    assert timeline.time_to("healthy", 50) < timeline.time_to("healthy", 100)


def test_a_fleet_file_deals_tags_and_profiles_exactly(tmp_path: Path) -> None:
    path = tmp_path / "fleet.yaml"
    path.write_text(
        "count: 100\nids: 'cam-{i:03d}'\ntags:\n  ring: prod\n"
        "  gpu: {share: 30, value: true, otherwise: false}\n"
        "sites: [a, b]\nprofiles:\n  - {name: jetson, share: 30, bandwidth_mbps: 50}\n"
        "  - {name: pi, share: 70, bandwidth_mbps: 8, disk_free_mb: 500}\n"
    )
    description = load_fleet_file(path)
    template = description.tag_template()
    deal = description.profile_for()
    from simulator import tags_for

    tags = [tags_for(template, i) for i in range(100)]
    assert sum(t["gpu"] for t in tags) == 30 and {t["site"] for t in tags} == {"a", "b"}
    assert sum(deal(i).name == "jetson" for i in range(100)) == 30
    assert sum(deal(i).name == "jetson" for i in range(10)) == 3  # any prefix has its share
    assert description.ids.format(i=7) == "cam-007"

    path.write_text("count: 10\nprofiles:\n  - {name: a, share: 60}\n  - {name: b, share: 30}\n")
    with pytest.raises(ConfigError, match="add up to 90%"):
        load_fleet_file(path)


def test_a_fault_on_the_command_line_is_a_scenario_step() -> None:
    step = parse_fault("do=offline,site=b,at=10,for=30")
    assert (step.do, step.where, step.at, step.duration) == ("offline", {"site": "b"}, 10, 30)
    step = parse_fault("do=fail-start,module=scorer,gpu=true,share=50")
    assert (step.module, step.where, step.share) == ("scorer", {"gpu": True}, 50)
    step = parse_fault("do=offline,when=healthy:50,site=b")
    assert step.when == {"healthy": 50.0} and step.at is None
    with pytest.raises(ConfigError, match="module"):
        parse_fault("do=fail-start")
