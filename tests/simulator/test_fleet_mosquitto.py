"""Simulated fleets against real Mosquitto: the agents' own MQTT transport, real last wills over
cut links, and a staged rollout driven by the publisher's CLI (`deploy create --rollout ...
--wait`) that cannot tell simulated devices from real ones."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from modules.deployment import in_rollout, rollout_bucket
from publisher import Model, Module
from simulator import Fleet
from tests._services import Service
from tests.publisher._harness import IRIS, acli, status_json, workspace
from tests.simulator._documents import DIGEST_1, DIGEST_2, KEY, document, trust_file

pytestmark = [pytest.mark.services, pytest.mark.timeout(180)]


def _fleet_name(prefix: str) -> str:
    """The session broker is shared: each test keeps its retained messages under its own fleet."""
    return f"{prefix}{os.urandom(3).hex()}"


async def test_agents_on_mosquitto_converge_and_a_cut_link_fires_the_last_will(
    tmp_path: Path, mosquitto: Service
) -> None:
    name = _fleet_name("simmq")
    async with Fleet(12, trust=[trust_file(tmp_path)], hub=mosquitto.url, fleet=name) as fleet:
        await fleet.deploy(document(1, fleet=name), KEY)
        assert (await fleet.converged("iris", 1, timeout=30)).counts == {"applied": 12}
        away = fleet.device(4)
        away.go_offline()
        await fleet.wait_for(lambda: fleet.presence(away.device_id) is False, timeout=10, what="last will")
        await fleet.deploy(document(2, DIGEST_2, fleet=name), KEY)
        result = await fleet.converged("iris", 2, timeout=30)
        assert result.devices("offline") == [away.device_id] and result.counts["applied"] == 11
        assert away.runtime.running_digests() == {"scorer": DIGEST_1}
        away.go_online()
        result = await fleet.converged("iris", 2, devices=[away], timeout=60)
        assert result.counts == {"applied": 1}
        await fleet.wait_for(lambda: fleet.presence(away.device_id) is True, timeout=10, what="online")


async def test_a_rollout_rehearsal_with_the_publisher_cli_advances_then_aborts_and_restores(
    tmp_path: Path, distribution: Service, mosquitto: Service
) -> None:
    ws = workspace(tmp_path / "ws", distribution, mosquitto, _fleet_name("rehearse"))
    trust = tmp_path / "publisher.pub.pem"
    trust.write_text(ws.public_key_pem())
    model = await Model.register_async(ws, IRIS, "iris")
    v1 = await Module.package_async(ws, "iris-svc", [model])
    ids = "dev-{i:02d}"  # 2 of these 20 fall in the 10% step of "iris", 10 in its 50% step
    async with Fleet(
        20, trust=[trust], hub=mosquitto.url, fleet=ws.fleet, ids=ids, tags={"ring": "prod"}
    ) as fleet:
        code, out, err = await acli(
            ws, "deploy", "create", "-n", "iris", "--module", f"iris-svc:{v1.version}",
            "--target", "tags.ring = 'prod'", "--rollout", "10%,50%,100%",
            "--min-healthy", "0", "--max-failure-ratio", "0.2", "--wait", "--json",
        )  # fmt: skip
        assert code == 0, out + err
        assert "step 3/3" in err
        assert all(d.runtime.running_digests() == {"iris-svc": v1.digest} for d in fleet)
        status = await status_json(ws)
        (summary,) = status["deployments"]
        assert (summary["version"], summary["healthy"]) == (3, 20)

        # v2 fails to start on 6 devices that join in the 50% step: the 10% step passes, the
        # 50% step fails (6 of 10, above 20%), and v1 comes back everywhere.
        first = [d for d in fleet if in_rollout("iris", d.device_id, 10)]
        later = sorted(
            (d for d in fleet if d not in first), key=lambda d: rollout_bucket("iris", d.device_id)
        )
        failing = later[:6]
        assert all(in_rollout("iris", d.device_id, 50) for d in failing)
        v2 = await Module.package_async(ws, "iris-svc", [model], description="v2")
        assert v2.digest != v1.digest
        for device in failing:
            device.runtime.fail_digest(v2.digest, "init() raised RuntimeError: simulated bad release")
        code, out, err = await acli(
            ws, "deploy", "update", "-n", "iris", "--module", f"iris-svc:{v2.version}", "--wait", "--json"
        )
        assert code == 1, out + err
        outcome = json.loads(out)
        assert "aborted" in outcome["summary"] and "restored version 3" in outcome["summary"], outcome
        assert set(outcome["failed_devices"]) <= {d.device_id for d in failing}
        restored = await fleet.converged("iris", 6, timeout=60)
        assert restored.counts == {"applied": 20}
        assert all(d.runtime.running_digests() == {"iris-svc": v1.digest} for d in fleet)
