"""The single `modelfleet` command: a lazy dispatcher.

Each package owns its commands and declares them as entry points in the `modelfleet.commands`
group (see pyproject.toml); this module only maps the first word to one of them and imports it
on demand. So `modelfleet agent run` never imports the publisher (and the other way round), and
the contract package never names the packages built on it.
"""

from __future__ import annotations

import sys
from importlib.metadata import EntryPoint, entry_points

GROUP = "modelfleet.commands"

# One line of help per command, in the order of the workflow, for `modelfleet --help`. Which
# module runs a command is the entry point's business, not this table's.
HELP: dict[str, str] = {
    "init": "create a workspace: modelfleet.toml and a signing key",
    "key": "show the workspace's public signing key",
    "model": "register, list, show, download and delete models",
    "module": "package models with their entry script as modules",
    "image": "module container images and their Debian base image",
    "deploy": "publish, update, roll out and delete signed deployments",
    "status": "the fleet: devices, deployments, module health",
    "device": "one device: show, logs, restart a module, ping",
    "serve": "serve a published module or an entry script locally",
    "hub": "run the embedded broker and registry",
    "agent": "run and inspect the edge agent",
    "pki": "certificates for the broker's mTLS: CA, publishers, devices, CSRs",
    "broker": "write a Mosquitto config and ACL for a fleet (mTLS only)",
    "sim": "simulated fleets of real agents: `sim run` for tests and rollout rehearsals",
    "simulate": "the first name of `sim run` (same options)",
}


def commands() -> dict[str, EntryPoint]:
    """The installed commands by name, in `HELP`'s order (any others after it, sorted).

    Nothing is imported here: an entry point is only a name until `load()`.
    """
    found = {ep.name: ep for ep in entry_points(group=GROUP)}
    order = [name for name in HELP if name in found] + sorted(set(found) - set(HELP))
    return {name: found[name] for name in order}


def _usage(available: dict[str, EntryPoint]) -> str:
    lines = ["usage: modelfleet COMMAND [ARGS...]", "", "commands:"]
    lines += [f"  {name:<8} {HELP.get(name, '')}".rstrip() for name in available]
    lines += ["", "Run `modelfleet COMMAND --help` for the options of a command."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    available = commands()
    if not available:
        print(
            f"modelfleet: no commands are registered (entry point group {GROUP!r}); "
            "reinstall the package, e.g. `pip install -e .`",
            file=sys.stderr,
        )
        return 2
    if not args or args[0] in ("-h", "--help", "help"):
        print(_usage(available))
        return 0
    if args[0] == "--version":
        from importlib.metadata import version

        print(f"modelfleet {version('modelfleet')}")
        return 0
    entry = available.get(args[0])
    if entry is None:
        print(f"modelfleet: unknown command {args[0]!r}\n\n{_usage(available)}", file=sys.stderr)
        return 2
    command_main = entry.load()
    return int(command_main(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
