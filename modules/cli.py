"""The single `modelfleet` command: a lazy dispatcher.

Each package owns its commands; this module only maps the first word to the package's CLI module
and imports it on demand, so `modelfleet agent run` never imports the publisher (and the other
way round).
"""

from __future__ import annotations

import importlib
import sys

# first word -> module that exposes `main(argv: list[str]) -> int`
COMMANDS: dict[str, tuple[str, str]] = {
    "init": ("publisher.cli", "create a workspace: modelfleet.toml and a signing key"),
    "key": ("publisher.cli", "show the workspace's public signing key"),
    "model": ("publisher.cli", "register, list, show, download and delete models"),
    "module": ("publisher.cli", "package models with their entry script as modules"),
    "deploy": ("publisher.cli", "publish, update, roll out and delete signed deployments"),
    "status": ("publisher.cli", "the fleet: devices, deployments, module health"),
    "device": ("publisher.cli", "one device: show, logs, restart a module, ping"),
    "serve": ("publisher._serve", "serve a published module or an entry script locally"),
    "hub": ("modules.hub.cli", "run the embedded broker and registry"),
    "agent": ("edge_agent.cli", "run and inspect the edge agent"),
}


def _usage() -> str:
    lines = ["usage: modelfleet COMMAND [ARGS...]", "", "commands:"]
    lines += [f"  {name:<8} {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", "Run `modelfleet COMMAND --help` for the options of a command."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    if args[0] == "--version":
        from importlib.metadata import version

        print(f"modelfleet {version('modelfleet')}")
        return 0
    entry = COMMANDS.get(args[0])
    if entry is None:
        print(f"modelfleet: unknown command {args[0]!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(entry[0])
    return int(module.main(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
