"""`modelfleet simulate`: a simulated fleet on a real broker, running until stopped.

What it is for: rehearsing a rollout before it reaches real devices. Start a fleet shaped like
the real one (tags spread over sites, a share with a GPU, a share whose module fails to start),
then drive it with the ordinary commands from another terminal (`modelfleet deploy create
--rollout ... --wait`, `modelfleet status`, `modelfleet device ...`): they cannot tell it from
real devices. A progress line shows the devices online and each deployment's outcomes.
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

# The embedded broker (amqtt) was seen to stall at about 1,000 clients (docs/hub.md).
EMBEDDED_BROKER_LIMIT = 1000


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="modelfleet simulate",
        description="Run a simulated fleet (real agent code, simulated modules) until stopped.",
    )
    parser.add_argument("--devices", type=int, required=True, help="number of simulated devices")
    parser.add_argument(
        "--hub", default="mqtt://127.0.0.1:1883", help="mqtt:// or mqtts:// URL of the broker"
    )
    parser.add_argument("--fleet", default="default", help="fleet name (the publisher workspace's)")
    parser.add_argument(
        "--trust", action="append", type=Path, required=True, metavar="PUBKEY_FILE",
        help="publisher public key every device trusts (`modelfleet key` prints it); repeatable",
    )  # fmt: skip
    parser.add_argument(
        "--ids", default="sim-{i:04d}", help="device id pattern, with {i} (default sim-{i:04d})"
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
    parser.add_argument("--duration", type=float, help="stop after this many seconds (default: until Ctrl-C)")
    parser.add_argument("--progress", type=float, default=2.0, help="seconds between progress lines")
    parser.add_argument("--json", action="store_true", help="print a JSON summary when stopping")
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


def _raise_open_files_limit() -> None:
    """Each device holds a socket (two more through its relay): lift the soft limit to the hard one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _progress_line(fleet: Any) -> str:
    online = sum(d.online for d in fleet.devices)
    deployments: dict[str, Counter[str]] = {}
    for device in fleet.devices:
        report = fleet.report(device.device_id)
        for name, state in (report.deployments if report else {}).items():
            deployments.setdefault(name, Counter())[f"v{state.version} {state.outcome}"] += 1
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


async def _run(args: argparse.Namespace) -> int:
    from simulator._fleet import Fleet

    if args.devices < 1:
        raise ConfigError("--devices must be at least 1")
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
            f"modelfleet simulate: note: the embedded hub's broker stalls near {EMBEDDED_BROKER_LIMIT} "
            "clients; use Mosquitto for a fleet this size",
            file=sys.stderr,
        )
    _raise_open_files_limit()
    fleet = Fleet(
        args.devices,
        trust=args.trust,
        hub=args.hub,
        fleet=args.fleet,
        tags=_tags(args),
        ids=args.ids,
        root=args.data_dir,
        heartbeat_s=args.heartbeat,
        start_delay_s=args.start_delay,
        links=not args.no_links,
        agent_settings=settings,
        prepare=lambda device: _apply_fail_starts(device, fail_starts),
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with fleet:
        print(
            f"simulating {len(fleet.devices)} devices of fleet {args.fleet!r} on {args.hub}", file=sys.stderr
        )
        deadline = None if args.duration is None else loop.time() + args.duration
        last = ""
        while not stop.is_set():
            timeout = args.progress if deadline is None else min(args.progress, deadline - loop.time())
            if timeout <= 0:
                break
            try:
                async with asyncio.timeout(timeout):
                    await stop.wait()
            except TimeoutError:
                pass
            line = _progress_line(fleet)
            if line != last:
                print(line, file=sys.stderr, flush=True)
                last = line
        if args.json:
            print(json.dumps(_summary(fleet), indent=2, sort_keys=True))
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = _parser().parse_args(argv[1:] if argv and argv[0] == "simulate" else argv)
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
