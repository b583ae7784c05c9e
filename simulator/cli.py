"""`modelfleet sim run` (and its older name `modelfleet simulate`): a simulated fleet on a real
broker, running until stopped.

What it is for: rehearsing a rollout before it reaches real devices. Start a fleet shaped like
the real one (a fleet file: tags spread over sites, a share with a GPU, hardware profiles with
their bandwidth and disk; or flags), with the faults the field has (a scenario file, or
`--fault`), then drive it with the ordinary commands from another terminal (`modelfleet deploy
create --rollout ... --wait`, `modelfleet status`, `modelfleet device ...`): they cannot tell it
from real devices. A progress line shows the devices online and each deployment's outcomes; when
it stops, the timeline of the deployment it watched (a table, `--json`, `--plot out.png`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import resource
import signal
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from modules import ConfigError, ModelfleetError
from modules.tags import parse_device_tags

# The embedded hub's broker (amqtt) takes about 100 agents connecting at once; at 200, some never
# get their subscriptions acknowledged (bench/fleet_rollout.py, docs/hub.md).
EMBEDDED_BROKER_LIMIT = 100
DEFAULT_IDS = "sim-{i:04d}"
_RUN_DESCRIPTION = "Run a simulated fleet (real agent code, simulated modules) until stopped."


def _parser(prog: str = "modelfleet sim run", add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=_RUN_DESCRIPTION, add_help=add_help)
    parser.add_argument("--devices", type=int, help="number of simulated devices (or the fleet file's count)")
    parser.add_argument("--fleet-file", type=Path, help="YAML or JSON: count, ids, tags, sites, profiles")
    parser.add_argument("--scenario", type=Path, help="YAML or JSON: fault steps at times or on events")
    parser.add_argument(
        "--fault", action="append", metavar="K=V,...",
        help="one scenario step, e.g. do=offline,site=b,when=healthy:50,for=30 (repeatable)",
    )  # fmt: skip
    parser.add_argument(
        "--watch", metavar="DEPLOYMENT", help="the deployment to record (default: the first seen)"
    )
    parser.add_argument(
        "--plot", type=Path, metavar="PNG", help="write the timeline's plot here (matplotlib)"
    )
    parser.add_argument(
        "--hub", default="mqtt://127.0.0.1:1883", help="mqtt:// or mqtts:// URL of the broker"
    )
    parser.add_argument(
        "--fleet", help="fleet name (the publisher workspace's; default: the file's, or default)"
    )
    parser.add_argument(
        "--trust", action="append", type=Path, required=True, metavar="PUBKEY_FILE",
        help="publisher public key every device trusts (`modelfleet key` prints it); repeatable",
    )  # fmt: skip
    parser.add_argument(
        "--ids", default=DEFAULT_IDS, help="device id pattern, with {i} (default sim-{i:04d})"
    )
    parser.add_argument("--tag", action="append", metavar="K=V", help="a tag every device has")
    parser.add_argument("--spread", action="append", metavar="K=A,B,C", help="values dealt round-robin")
    parser.add_argument("--share", action="append", metavar="K=V:PCT", help="a tag on PCT%% of the devices")
    parser.add_argument(
        "--fail-start", action="append", metavar="MODULE[:PCT]",
        help="every start of MODULE fails on PCT%% of the devices (default 100)",
    )  # fmt: skip
    parser.add_argument("--start-delay", type=float, default=0.0, help="seconds each module start takes")
    parser.add_argument("--heartbeat", type=float, default=30.0, help="seconds between heartbeats")
    parser.add_argument("--data-dir", type=Path, help="where device state goes (default: a temporary folder)")
    parser.add_argument("--mqtt-username")
    parser.add_argument("--mqtt-password-file", type=Path)
    parser.add_argument("--mqtt-ca", type=Path, help="CA file for an mqtts:// broker")
    parser.add_argument("--no-links", action="store_true", help="connect directly (no cuttable relays)")
    parser.add_argument(
        "--real", type=int, default=0, metavar="N",
        help="the first N devices run the real runtime (registry pulls, processes, inference)",
    )  # fmt: skip
    parser.add_argument("--registry", help="the registry real devices pull from (with --real)")
    parser.add_argument(
        "--real-port-base", type=int, default=20000, metavar="PORT",
        help="added to module ports on the first real device; 100 more on each next one",
    )  # fmt: skip
    parser.add_argument(
        "--broker-restart-command", metavar="CMD",
        help="shell command a restart-broker step runs (e.g. systemctl restart mosquitto)",
    )  # fmt: skip
    parser.add_argument("--duration", type=float, help="stop after this many seconds (default: until Ctrl-C)")
    parser.add_argument("--progress", type=float, default=2.0, help="seconds between progress lines")
    parser.add_argument(
        "--json", action="store_true", help="print a JSON summary (and timeline) when stopping"
    )
    parser.add_argument("--log-level", default="WARNING")
    return parser


def _tags(args: argparse.Namespace) -> dict[str, Any]:
    from simulator._tags import parse_share, parse_spread

    template: dict[str, Any] = dict(parse_device_tags(args.tag))
    template.update(parse_spread(text) for text in args.spread or ())
    template.update(parse_share(text) for text in args.share or ())
    return template


def _apply_fail_starts(device: Any, fail_starts: list[tuple[str, float]]) -> None:
    """Set before the device's agent starts: a document already retained is applied at once."""
    from simulator._tags import in_share

    if device.real:  # a real device fails for real, not on request
        return
    for module, percent in fail_starts:
        if in_share(device.index, percent):
            device.fail_every_start(module)


def _fail_starts(texts: list[str] | None) -> list[tuple[str, float]]:
    out = []
    for text in texts or ():
        module, _, percent = text.partition(":")
        try:
            share = float(percent) if percent else 100.0
        except ValueError:
            share = -1.0
        if not module or not 0 <= share <= 100:
            raise ConfigError(f"--fail-start expects MODULE[:PERCENT], got {text!r}")
        out.append((module, share))
    return out


async def _run_command(command: str) -> None:
    """A restart-broker step from the command line: whatever restarts this broker here."""
    process = await asyncio.create_subprocess_shell(command)
    code = await process.wait()
    if code != 0:
        raise ConfigError(f"--broker-restart-command {command!r} exited with {code}")


def _raise_open_files_limit() -> None:
    """Each device holds a socket (two more through its relay): lift the soft limit to the hard one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


class Progress:
    """The progress line. Each device's deployment outcomes are read from its raw report only when
    a new one arrived (plain JSON, not the full report model): at 10,000 devices a line every 2 s
    that validated every report again held the loop the fleet runs on for a second or more."""

    def __init__(self) -> None:
        # device id -> (the raw report read, its "v<version> <outcome>" per deployment)
        self._read: dict[str, tuple[bytes | None, tuple[tuple[str, str], ...]]] = {}

    def outcomes(self, fleet: Any, device_id: str) -> tuple[tuple[str, str], ...]:
        raw = fleet.raw_report(device_id)
        known = self._read.get(device_id)
        if known is not None and known[0] is raw:
            return known[1]
        entries: tuple[tuple[str, str], ...] = ()
        try:
            deployments = json.loads(raw).get("deployments") if raw else None
            if isinstance(deployments, dict):
                entries = tuple(
                    (name, f"v{state.get('version')} {state.get('outcome')}")
                    for name, state in deployments.items()
                    if isinstance(state, dict)
                )
        except (ValueError, AttributeError):
            entries = ()
        self._read[device_id] = (raw, entries)
        return entries

    def line(self, fleet: Any) -> str:
        online = sum(d.online for d in fleet.devices)
        deployments: dict[str, Counter[str]] = {}
        for device in fleet.devices:
            for name, outcome in self.outcomes(fleet, device.device_id):
                deployments.setdefault(name, Counter())[outcome] += 1
        parts = [f"{online}/{len(fleet.devices)} devices online"]
        for name, counts in sorted(deployments.items()):
            parts.append(f"{name}: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
        return " | ".join(parts)


def _summary(fleet: Any) -> dict[str, Any]:
    devices = {}
    for device in fleet.devices:
        report = fleet.report(device.device_id)
        devices[device.device_id] = {
            "online": device.online,
            "tags": device.tags,
            "deployments": {
                n: {"version": s.version, "outcome": s.outcome} for n, s in report.deployments.items()
            }
            if report
            else {},
        }
    return {"devices": devices}


async def _watch_first_deployment(fleet: Any, name: str | None) -> Any:
    """The timeline of `name`, or of the first deployment any device reports."""
    if name is None:

        def first_seen() -> str | None:
            for device in fleet.devices:
                report = fleet.report(device.device_id)
                if report is not None and report.deployments:
                    return sorted(report.deployments)[0]
            return None

        name = await fleet.wait_for(first_seen, timeout=365 * 86400, what="a first deployment")
    return fleet.timeline(name)


async def _run(args: argparse.Namespace) -> int:
    from simulator._description import load_fleet_file
    from simulator._fleet import Fleet
    from simulator._scenario import Scenario, load_scenario, parse_fault, run_scenario

    description = load_fleet_file(args.fleet_file) if args.fleet_file else None
    if args.devices is None:
        if description is None:
            raise ConfigError("give --devices N or a --fleet-file")
        args.devices = description.count
    if args.devices < 1:
        raise ConfigError("--devices must be at least 1")
    scenario = load_scenario(args.scenario) if args.scenario else Scenario()
    scenario.steps.extend(parse_fault(text) for text in args.fault or ())
    if args.hub == "memory":
        raise ConfigError("--hub must be a real broker (other commands cannot reach an in-memory one)")
    settings: dict[str, Any] = {}
    if args.mqtt_username:
        settings["mqtt_username"] = args.mqtt_username
    if args.mqtt_password_file:
        settings["mqtt_password_file"] = args.mqtt_password_file
    if args.mqtt_ca:
        settings["mqtt_tls_ca_file"] = args.mqtt_ca
    fail_starts = _fail_starts(args.fail_start)
    if args.devices > EMBEDDED_BROKER_LIMIT:
        print(
            f"modelfleet sim: warning: if {args.hub} is the embedded hub (`modelfleet hub up`), "
            f"{args.devices} devices is past what its broker handles (about {EMBEDDED_BROKER_LIMIT}, "
            "docs/hub.md): use Mosquitto, set up as docs/hub.md says",
            file=sys.stderr,
        )
    _raise_open_files_limit()
    shape: dict[str, Any] = {"tags": _tags(args), "ids": args.ids}
    if description is not None:
        template = description.tag_template()
        template.update(shape["tags"])  # flags add to (and override) the file's tags
        shape = {"tags": template, "ids": args.ids if args.ids != DEFAULT_IDS else description.ids}
        shape["profiles"] = description.profile_for()
    fleet_name = args.fleet or (description.fleet if description and description.fleet else "default")
    if args.real < 0:
        raise ConfigError("--real must be 0 or more")
    real_settings: dict[str, Any] = {"port_base": args.real_port_base}
    if args.registry:
        real_settings["registry"] = args.registry
    elif args.real:
        raise ConfigError("--real needs --registry URL (where the real devices pull modules from)")
    if args.broker_restart_command:
        shape["restart_broker"] = lambda: _run_command(args.broker_restart_command)
    fleet = Fleet(
        args.devices,
        trust=args.trust,
        hub=args.hub,
        fleet=fleet_name,
        root=args.data_dir,
        heartbeat_s=args.heartbeat,
        start_delay_s=args.start_delay,
        links=not args.no_links,
        agent_settings=settings,
        prepare=lambda device: _apply_fail_starts(device, fail_starts),
        real=args.real,
        real_settings=real_settings,
        **shape,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with fleet:
        print(
            f"simulating {len(fleet.devices)} devices of fleet {fleet_name!r} on {args.hub}", file=sys.stderr
        )
        timeline: Any = None
        watching = asyncio.create_task(_watch_first_deployment(fleet, args.watch))

        async def faults() -> None:
            nonlocal timeline
            # steps that wait for a share of the rollout need its timeline; timed ones start now
            if any(step.when for step in scenario.steps):
                timeline = await asyncio.shield(watching)
            for line in await run_scenario(fleet, scenario, timeline):
                print(f"at {line['at']:.1f} s: {line['step']} ({line['devices']} devices)", file=sys.stderr)

        scenario_task = asyncio.create_task(faults()) if scenario.steps else None
        deadline = None if args.duration is None else loop.time() + args.duration
        last = ""
        progress = Progress()
        while not stop.is_set():
            timeout = args.progress if deadline is None else min(args.progress, deadline - loop.time())
            if timeout <= 0:
                break
            try:
                async with asyncio.timeout(timeout):
                    await stop.wait()
            except TimeoutError:
                pass
            line = progress.line(fleet)
            if line != last:
                print(line, file=sys.stderr, flush=True)
                last = line
        for task in (scenario_task, watching):
            if task is not None and not task.done():
                task.cancel()
        if scenario_task is not None:
            failed = (await asyncio.gather(scenario_task, return_exceptions=True))[0]
            if isinstance(failed, ModelfleetError):
                raise failed
        if watching.done() and not watching.cancelled() and watching.exception() is None:
            timeline = watching.result()
        summary = _summary(fleet)
        if timeline is not None:
            await timeline.stop()
            print(timeline.table(), file=sys.stderr)
            summary["timeline"] = timeline.summary()
            if args.plot:
                print(f"plot: {timeline.plot(args.plot)}", file=sys.stderr)
        elif args.plot:
            print("modelfleet sim: no deployment was seen: no plot", file=sys.stderr)
        if args.json:
            print(json.dumps(summary, indent=2, sort_keys=True))
    return 0


def _sim_parser() -> argparse.ArgumentParser:
    """`modelfleet sim ACTION`: one action today (`run`), named so that more can follow."""
    parser = argparse.ArgumentParser(prog="modelfleet sim", description="Simulated fleets of real agents.")
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    actions.add_parser(
        "run",
        parents=[_parser(add_help=False)],
        help="run a simulated fleet until stopped",
        description=_RUN_DESCRIPTION,
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """`modelfleet sim run ...`, or `modelfleet simulate ...` (the same command, its first name)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    prog = "modelfleet sim run"
    if argv and argv[0] == "simulate":
        argv, prog = argv[1:], "modelfleet simulate"
    elif argv and argv[0] == "sim":
        argv = argv[1:]
    parser = _sim_parser() if prog == "modelfleet sim run" else _parser(prog)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, str(args.log_level).upper(), logging.WARNING),
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        return asyncio.run(_run(args))
    except ModelfleetError as exc:
        print(f"modelfleet: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
