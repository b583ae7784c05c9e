"""The agent daemon's own process: what `modelfleet agent run` becomes once its command line is read.

`agent run` checks the configuration (an error is one line and exit 2, before anything starts),
then replaces itself (exec, same pid, same stdio and environment) with this module, handing the
same settings over through an inherited pipe. The long-running process so never holds the
command dispatcher, argparse and the entry-point scan, which an agent on a small device would
otherwise carry for its whole life. Secrets never pass through argv or the environment here.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any

from modules import ModelfleetError

HANDOVER_FLAG = "--handover-fd"


def exec_daemon(handover: dict[str, Any]) -> None:
    """Replace this process with the daemon, which reads `handover` from an inherited pipe.
    Returns only where exec cannot be used (then the caller runs the agent in this process)."""
    if not sys.executable or not hasattr(os, "execv"):
        return
    payload = json.dumps(handover).encode()
    read_end, write_end = os.pipe()
    try:
        os.write(write_end, payload)  # far below a pipe's buffer: never blocks
    finally:
        os.close(write_end)
    os.set_inheritable(read_end, True)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(
        sys.executable, [sys.executable, *_interpreter_flags(), "-c", _START, HANDOVER_FLAG, str(read_end)]
    )


# The folder this package was imported from: on the daemon's path only where an installed
# package's finder does not already provide it (a source checkout run with `python -m`).
_ROOT = str(Path(__file__).resolve().parents[1])
_START = (
    f"import sys\nif {_ROOT!r} not in sys.path: sys.path.insert(0, {_ROOT!r})\n"
    "from edge_agent._daemon import main\nsys.exit(main(sys.argv[1:]))"
)


def _interpreter_flags() -> list[str]:
    """The daemon runs as isolated as this process did, and never with the working folder first
    on its path (`-P`): a package of that name in the folder `agent run` was started from must
    not stand in for the agent's own."""
    if sys.flags.isolated:
        return ["-I"]
    flags = ["-P"]
    if sys.flags.ignore_environment:
        flags.append("-E")
    if sys.flags.no_user_site:
        flags.append("-s")
    return flags


def run_agent(handover: dict[str, Any]) -> int:
    """Configure logging, load the settings as `agent run` read them, and run until SIGTERM."""
    from edge_agent._agent import Agent
    from edge_agent._config import load_agent_config
    from modules.service_keys import DEVICE_KEY_FILE, open_device_key

    logging.basicConfig(
        level=getattr(logging, str(handover.get("log_level", "INFO")).upper(), logging.INFO),
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    config_file = handover.get("config")
    config = load_agent_config(Path(config_file) if config_file else None, handover["overrides"])
    # A first start makes the device key in a child process, before the agent reads it: this
    # process then never carries OpenSSL's X25519 set-up for a key it only reports.
    open_device_key(config.data_dir / DEVICE_KEY_FILE, make_apart=True)
    agent = Agent(config)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, agent.request_stop)
        await agent.run_forever()

    asyncio.run(main())
    return 0


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] != HANDOVER_FLAG or not argv[1].isdigit():
        print(f"modelfleet: error: started by `modelfleet agent run`, not by hand ({argv})", file=sys.stderr)
        return 2
    try:
        with os.fdopen(int(argv[1]), "rb") as pipe:
            handover = json.loads(pipe.read())
        return run_agent(handover)
    except ModelfleetError as exc:
        print(f"modelfleet: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
