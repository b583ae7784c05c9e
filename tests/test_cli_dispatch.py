"""The one `modelfleet` command reaches every package's commands, and imports only what it runs."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from modules.cli import GROUP, HELP, commands

ROOT = Path(__file__).resolve().parents[1]


def _declared() -> dict[str, str]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["entry-points"][GROUP]


@pytest.mark.parametrize("command", sorted(_declared()))
def test_every_command_answers_help(command: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "modules.cli", command, "--help"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert "usage:" in proc.stdout


def test_the_workflow_commands_are_all_there() -> None:
    expected = {"init", "key", "model", "module", "deploy", "status", "device", "serve", "hub", "agent"}
    assert expected <= set(commands())


def test_installed_commands_are_the_declared_ones_each_with_help() -> None:
    installed = {name: ep.value for name, ep in commands().items()}
    assert installed == _declared(), "stale install: run `pip install -e .` (or `make venv`) again"
    assert set(HELP) == set(installed), "every command needs a help line in modules/cli.py HELP"


def test_usage_lists_every_command_with_its_help() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "modules.cli", "--help"], capture_output=True, text=True, cwd=ROOT, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    for name, help_ in HELP.items():
        assert f"  {name:<8} {help_}" in proc.stdout


def test_agent_command_does_not_import_the_publisher() -> None:
    code = (
        "import sys; from modules.cli import main; "
        "rc = main(['agent', 'status', '--port', '1']); "
        "print(sorted(m for m in sys.modules if m.startswith('publisher')))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert proc.stdout.strip().splitlines()[-1] == "[]", proc.stdout
