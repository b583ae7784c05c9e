"""`modelfleet deploy` against real Mosquitto and Distribution, with real agents and modules."""

from __future__ import annotations

import json
from pathlib import Path

from publisher import Model, Module, Workspace
from tests._services import Service
from tests.edge_agent._fleet import wait_for
from tests.publisher._harness import IRIS, acli, fleet, running_digests, settled_status, workspace


def _fleet_name(tmp_path: Path) -> str:
    return "t" + str(abs(hash(str(tmp_path))) % 10**8)


async def test_target_priority_and_tag_changes_decide_which_devices_run_a_deployment(
    tmp_path: Path, distribution: Service, mosquitto: Service
) -> None:
    ws: Workspace = workspace(tmp_path / "ws", distribution, mosquitto, _fleet_name(tmp_path))
    model = await Model.register_async(ws, IRIS, "iris")
    base = await Module.package_async(ws, "iris-base", [model])
    special = await Module.package_async(ws, "iris-special", [model])
    async with fleet(tmp_path, ws, distribution, mosquitto) as f:
        a1 = await f.start("a1", {"site": "a"})
        a2 = await f.start("a2", {"site": "a"})
        b1 = await f.start("b1", {"site": "b"})

        code, out, err = await acli(
            ws, "deploy", "create", "-n", "site-a", "--module", "iris-base", "--target", "tags.site = 'a'",
            "--port", "6001", "--env", "LOG_LEVEL=info", "--wait",
        )  # fmt: skip
        assert code == 0, err
        assert "published site-a version 1" in out
        assert "2 devices healthy" in out
        assert running_digests(a1) == running_digests(a2) == {"iris-base": base.digest}
        assert running_digests(b1) == {}
        status = await settled_status(ws, [a1, a2, b1])
        (summary,) = status["deployments"]
        assert (summary["targeted"], summary["applied"], summary["healthy"], summary["failed"]) == (
            2,
            2,
            2,
            0,
        )
        assert b1.deployments["site-a"].outcome == "not-targeted"

        # A higher-priority deployment wins where both match: a2 and b1, not a1.
        code, _, err = await acli(
            ws, "deploy", "create", "-n", "special", "--module", "iris-special", "--priority", "10",
            "--target", "deviceId IN ['a2', 'b1']", "--port", "6002", "--wait",
        )  # fmt: skip
        assert code == 0, err
        await wait_for(lambda: running_digests(a2) == {"iris-special": special.digest}, what="a2 switched")
        assert running_digests(a1) == {"iris-base": base.digest}
        assert running_digests(b1) == {"iris-special": special.digest}
        assert a2.deployments["site-a"].outcome == "not-targeted"
        await settled_status(ws, [a1, a2, b1])

        # Deleting `special` hands a2 back to site-a and leaves b1 with nothing. Then tags change
        # (the agent restarts on the same data folder with new tags): b1 joins site a and picks
        # the deployment up, a1 leaves site a and drops it.
        code, out, err = await acli(ws, "deploy", "delete", "special")
        assert code == 0, err
        await wait_for(lambda: running_digests(a2) == {"iris-base": base.digest}, what="a2 back on base")
        await wait_for(lambda: running_digests(b1) == {}, what="b1 has nothing")
        await f.stop("b1")
        await f.stop("a1")
        b1 = await f.start("b1", {"site": "a"})
        a1 = await f.start("a1", {"site": "c"})
        await wait_for(lambda: running_digests(b1) == {"iris-base": base.digest}, what="b1 picked it up")
        await wait_for(lambda: running_digests(a1) == {}, what="a1 dropped it")
        status = await settled_status(ws, [a1, a2, b1])
        (summary,) = status["deployments"]
        assert (summary["name"], summary["targeted"], summary["healthy"]) == ("site-a", 2, 2)

        code, out, _ = await acli(ws, "deploy", "list", "--json")
        assert [d["name"] for d in json.loads(out)] == ["site-a"]
        code, out, _ = await acli(ws, "deploy", "show", "site-a")
        shown = json.loads(out)
        assert shown["signature"]["alg"] == "ed25519"
        env = shown["content"]["modulesContent"]["$edgeAgent"]["properties.desired"]["modules"]["iris-base"]
        assert env["env"] == {"LOG_LEVEL": {"value": "info"}}
