"""Fleets of real agents on the in-memory broker: targeting, staged rollouts and faults, judged
from what the devices publish, as `modelfleet status` would see it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from modules.deployment import in_rollout, sign_document
from simulator import Fleet, share, spread
from tests.simulator._documents import DIGEST_1, DIGEST_2, KEY, document, trust_file

pytestmark = pytest.mark.timeout(60)


async def test_fifty_agents_converge_on_a_signed_deployment_and_report_it(tmp_path: Path) -> None:
    async with Fleet(50, trust=[trust_file(tmp_path)], root=tmp_path / "fleet") as fleet:
        await fleet.deploy(document(1), KEY)
        result = await fleet.converged("iris", 1, timeout=30)
        assert result.counts == {"applied": 50}
        await fleet.deploy(document(2, DIGEST_2), KEY)
        result = await fleet.converged("iris", 2, timeout=30)
        assert result.counts == {"applied": 50}
        for device in fleet:
            report = fleet.report(device.device_id)
            assert report is not None and report.modules["scorer"].digest == DIGEST_2
            assert report.modules["scorer"].status == "running"
            assert device.runtime.running_digests() == {"scorer": DIGEST_2}
        assert {d.device_id for d in fleet} == {f"sim-{i:04d}" for i in range(50)}
        assert len({d.config.data_dir for d in fleet}) == 50


async def test_tag_templates_and_target_conditions_pick_exactly_their_share(tmp_path: Path) -> None:
    tags = {"gpu": share(True, 30, otherwise=False), "site": spread("a", "b"), "ring": "prod"}
    async with Fleet(50, trust=[trust_file(tmp_path)], tags=tags) as fleet:
        assert sum(d.tags["gpu"] for d in fleet) == 15
        assert [d.tags["site"] for d in fleet][:4] == ["a", "b", "a", "b"]
        await fleet.deploy(document(1, target="tags.gpu = true AND tags.site = 'a'"), KEY)
        result = await fleet.converged("iris", 1)
        expected = {d.device_id for d in fleet if d.tags["gpu"] and d.tags["site"] == "a"}
        assert set(result.devices("applied")) == expected and expected
        assert result.counts["not-targeted"] == 50 - len(expected)


async def test_a_staged_rollout_applies_to_the_devices_of_its_step_only(tmp_path: Path) -> None:
    rollout = {"steps": [10, 50, 100], "currentStep": 0, "minHealthySeconds": 0}
    async with Fleet(50, trust=[trust_file(tmp_path)]) as fleet:
        for step, percent in enumerate([10, 50, 100]):
            await fleet.deploy(document(step + 1, rollout={**rollout, "currentStep": step}), KEY)
            result = await fleet.converged("iris", step + 1)
            members = {d.device_id for d in fleet if in_rollout("iris", d.device_id, percent)}
            assert set(result.devices("applied")) == members, percent
            assert set(result.devices("not-targeted")) == {d.device_id for d in fleet} - members
            for device in fleet:
                digests = device.runtime.running_digests()
                assert digests == ({"scorer": DIGEST_1} if device.device_id in members else {})
        assert 0 < len(members) == 50


async def test_an_offline_device_is_reported_offline_by_its_will_and_catches_up_when_back(
    tmp_path: Path,
) -> None:
    async with Fleet(20, trust=[trust_file(tmp_path)]) as fleet:
        await fleet.deploy(document(1), KEY)
        await fleet.converged("iris", 1)
        away = fleet.device(3)
        away.go_offline()
        await fleet.wait_for(lambda: fleet.presence(away.device_id) is False, timeout=5, what="the will")
        await fleet.deploy(document(2, DIGEST_2), KEY)
        result = await fleet.converged("iris", 2)
        assert result.devices("offline") == [away.device_id] and result.counts["applied"] == 19
        assert away.runtime.running_digests() == {"scorer": DIGEST_1}  # it keeps serving what it had
        away.go_online()
        result = await fleet.converged("iris", 2, devices=[away])
        assert result.counts == {"applied": 1}
        assert fleet.presence(away.device_id) is True
        assert away.runtime.running_digests() == {"scorer": DIGEST_2}


async def test_a_failed_start_is_reported_failed_with_its_reason_while_others_apply(tmp_path: Path) -> None:
    async with Fleet(20, trust=[trust_file(tmp_path)]) as fleet:
        fleet.device(5).fail_next_start("scorer", "init() raised ValueError: bad weights")
        await fleet.deploy(document(1), KEY)
        result = await fleet.converged("iris", 1)
        assert result.devices("failed") == [fleet.device(5).device_id]
        report = fleet.device(5).report
        assert report is not None
        assert "bad weights" in (report.deployments["iris"].reason or "")
        assert report.modules["scorer"].status == "failed"
        # an update whose new version fails keeps the old one serving, and says why
        for device in fleet.devices[:4]:
            device.runtime.fail_digest(DIGEST_2, "readiness probe timed out")
        await fleet.deploy(document(2, DIGEST_2), KEY)
        result = await fleet.converged("iris", 2)
        assert set(result.devices("failed")) == {d.device_id for d in fleet.devices[:4]}
        assert result.counts["applied"] == 16
        first = fleet.device(0).report
        assert first is not None and first.modules["scorer"].digest == DIGEST_1
        assert first.modules["scorer"].status == "running"
        assert "readiness probe timed out" in (first.modules["scorer"].last_error or "")


async def test_a_crash_shows_backoff_then_a_restart_and_unhealthy_shows_unhealthy(tmp_path: Path) -> None:
    async with Fleet(5, trust=[trust_file(tmp_path)]) as fleet:
        await fleet.deploy(document(1), KEY)
        await fleet.converged("iris", 1)
        crashed, sick = fleet.device(1), fleet.device(2)
        crashed.runtime.restart_delay_s = 0.3
        crashed.crash("scorer")

        def module(device):  # type: ignore[no-untyped-def]
            report = device.report
            return report.modules["scorer"] if report is not None else None

        await fleet.wait_for(lambda: module(crashed).status == "backoff", timeout=5, what="backoff")
        assert module(crashed).exit_code == 1
        await fleet.wait_for(
            lambda: module(crashed).status == "running" and module(crashed).restart_count == 1,
            timeout=5,
            what="restart",
        )
        sick.make_unhealthy("scorer")
        await fleet.wait_for(lambda: module(sick).health == "unhealthy", timeout=5, what="unhealthy")
        assert module(sick).status == "unhealthy"
        sick.heal()
        await fleet.wait_for(lambda: module(sick).health == "healthy", timeout=5, what="healthy again")


async def test_after_the_broker_drops_and_comes_back_empty_every_device_reports_again(tmp_path: Path) -> None:
    async with Fleet(10, trust=[trust_file(tmp_path)]) as fleet:
        assert fleet.broker is not None
        await fleet.deploy(document(1), KEY)
        await fleet.converged("iris", 1)
        fleet.broker_down()
        assert not any(d.online for d in fleet)
        fleet.broker_up()
        topics = fleet.topics
        await fleet.wait_for(
            lambda: all(fleet.broker.retained(topics.reported(d.device_id)) for d in fleet),
            timeout=10,
            what="every device re-reported to an empty broker",
        )
        assert all(d.runtime.running_digests() == {"scorer": DIGEST_1} for d in fleet)


async def test_a_document_signed_by_an_unknown_key_is_refused_by_every_device(tmp_path: Path) -> None:
    async with Fleet(10, trust=[trust_file(tmp_path)]) as fleet:
        forged = sign_document(document(1), Ed25519PrivateKey.generate())
        await fleet.publish(fleet.topics.deployment("iris"), json.dumps(forged.to_json_dict()).encode())
        await fleet.wait_for(
            lambda: all((r := d.report) is not None and r.refused for d in fleet), what="refusals"
        )
        for device in fleet:
            report = device.report
            assert report is not None and "not trusted" in report.refused[0].reason
            assert device.runtime.starts == 0


async def test_a_restarted_agent_resumes_from_its_data_folder(tmp_path: Path) -> None:
    async with Fleet(3, trust=[trust_file(tmp_path)]) as fleet:
        await fleet.deploy(document(1), KEY)
        await fleet.converged("iris", 1)
        device = fleet.device(0)
        await device.restart_agent()
        await fleet.wait_for(lambda: device.runtime.running_digests() == {"scorer": DIGEST_1}, timeout=10)
        assert device.agent is not None and device.agent.persisted.last_versions["iris"] == 1
