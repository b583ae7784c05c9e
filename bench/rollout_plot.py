"""The picture in docs/simulator.md: a 1,000-device staged rollout with faults, as a timeline.

Not a benchmark (nothing is timed against anything); it lives here beside the fleet benchmarks
because it needs the same things: its own Mosquitto and a large simulated fleet. The rollout is
the publisher's own (`publisher._rollout.drive`: 10% -> 50% -> 100%, advancing on health), the
devices are `simulator.Fleet` agents with two hardware profiles (fast and slow links), and a
scenario adds the faults: 2% of the devices crash on start, 5% receive a corrupted download (and
fetch it again), and a tenth of site b drops off the network for 15 s once half the fleet is
healthy.

    python bench/rollout_plot.py                      # writes docs/sim-rollout-1000.png
    python bench/rollout_plot.py --devices 200 --out rollout.png --json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from fleet import start_mosquitto

from modules.deployment import DeploymentDocument
from publisher import FleetConnection, Workspace, _deploy
from publisher._rollout import drive
from simulator import Fleet, FleetDescription, Scenario, run_scenario

ROOT = Path(__file__).resolve().parents[1]
DIGEST = "sha256:" + "7e" * 32
FLEET = {
    "count": 1000,
    "ids": "cam-{i:04d}",
    "tags": {"ring": "prod"},
    "sites": ["a", "b", "c"],
    "profiles": [
        {"name": "wired", "share": 40, "bandwidth_mbps": 40, "module_mb": 6},
        {"name": "lte", "share": 60, "bandwidth_mbps": 6, "module_mb": 6, "start_delay_s": 0.5},
    ],
}
SCENARIO = {
    "name": "faults",
    "steps": [
        {"at": 0, "do": "fail-start", "module": "detector", "share": 2, "reason": "init() raised: CUDA OOM"},
        {"at": 0, "do": "corrupt-download", "share": 5},
        {"when": {"healthy": 50}, "do": "offline", "where": {"site": "b"}, "share": 10, "for": 15},
    ],
}


def release(fleet: str) -> dict[str, object]:
    document = DeploymentDocument.model_validate(
        {
            "fleet": fleet,
            "name": "detector",
            "version": 1,
            "targetCondition": "tags.ring = 'prod'",
            "createdAt": datetime.now(UTC),
            "rollout": {"steps": [10, 50, 100], "minHealthySeconds": 3, "maxFailureRatio": 0.1},
            "content": {
                "modulesContent": {
                    "$edgeAgent": {
                        "properties.desired": {
                            "schemaVersion": "1.1",
                            "modules": {
                                "detector": {
                                    "type": "modelfleet",
                                    "status": "running",
                                    "restartPolicy": "always",
                                    "settings": {
                                        "module": "modules/detector",
                                        "digest": DIGEST,
                                        "port": 7000,
                                    },
                                }
                            },
                        }
                    }
                }
            },
        }
    )
    return {k: v for k, v in document.to_json_dict().items() if k != "signature"}


async def main_async(args: argparse.Namespace) -> int:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    work = Path(tempfile.mkdtemp(prefix="modelfleet-rollout-plot-"))
    mosquitto, hub = start_mosquitto(work)
    try:
        ws = Workspace.create(work / "ws", registry="http://127.0.0.1:9", hub=hub, fleet="plant")
        (work / "publisher.pub.pem").write_text(ws.public_key_pem())
        description = FleetDescription.model_validate({**FLEET, "count": args.devices})
        fleet = Fleet.from_description(
            description,
            trust=[work / "publisher.pub.pem"],
            hub=hub,
            fleet=ws.fleet,
            root=work / "devices",
            agent_settings={"retry_base_s": 1.0, "retry_max_s": 4.0},
        )
        async with fleet:
            timeline = fleet.timeline("detector", every_s=0.25)
            faults = asyncio.create_task(run_scenario(fleet, Scenario.model_validate(SCENARIO), timeline))
            await asyncio.sleep(1.0)
            async with FleetConnection(ws) as connection:
                doc = await _deploy.publish(connection, ws, release(ws.fleet))
                timeline.mark("v1 published (10%)")

                async def passed(step: DeploymentDocument) -> None:
                    assert step.rollout is not None
                    timeline.mark(f"step {step.rollout.percent}% healthy")

                result = await drive(connection, ws, doc, None, step_timeout_s=300, on_step=passed)
            print(result.summary, file=sys.stderr)
            await faults
            await fleet.converged("detector", result.version, timeout=120)
            await asyncio.sleep(2.0)
            await timeline.stop()
            title = f"staged rollout 10% -> 50% -> 100% on {args.devices} simulated devices, with faults"
            timeline.plot(args.out, title=title)
            print(timeline.table(), file=sys.stderr)
            if args.json:
                print(json.dumps(timeline.summary(), indent=1))
    finally:
        mosquitto.terminate()
        mosquitto.wait(10)
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "sim-rollout-1000.png")
    parser.add_argument("--json", action="store_true")
    return asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
