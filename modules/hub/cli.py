"""`modelfleet hub up`: run the embedded registry and broker in the foreground until interrupted."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from pathlib import Path

from modules._errors import ModelfleetError
from modules.hub._hub import EmbeddedHub


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="modelfleet hub",
        description="Run the embedded OCI registry and MQTT broker for a one-machine quick start.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    up = commands.add_parser("up", help="start the registry and the broker, run until Ctrl-C")
    up.add_argument(
        "--data-dir",
        type=Path,
        default=Path(".modelfleet-hub"),
        help="where the registry keeps its OCI layouts (default: ./.modelfleet-hub)",
    )
    up.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    up.add_argument("--registry-port", type=int, default=5000, help="registry port (default: 5000)")
    up.add_argument("--mqtt-port", type=int, default=1883, help="MQTT port (default: 1883)")
    return parser


async def _up(args: argparse.Namespace) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    hub = EmbeddedHub(args.data_dir, args.host, args.registry_port, args.mqtt_port)
    await hub.start()
    try:
        print(f"registry: {hub.registry_url}")
        print(f"mqtt:     {hub.mqtt_url}")
        print("To point modelfleet at this hub:")
        print(f"  export MODELFLEET_REGISTRY={hub.registry_url}")
        print(f"  export MODELFLEET_HUB={hub.mqtt_url}")
        print("Press Ctrl-C to stop.", flush=True)
        await stop.wait()
    finally:
        await hub.stop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(Exception):
                loop.remove_signal_handler(signum)


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv[1:] if argv and argv[0] == "hub" else argv)
    try:
        if args.command == "up":
            asyncio.run(_up(args))
    except ModelfleetError as exc:
        print(f"modelfleet: error: {exc}", file=sys.stderr)
        return exc.exit_code
    return 0
