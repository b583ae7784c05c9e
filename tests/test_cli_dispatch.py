"""The one `modelfleet` command reaches every package's commands, and imports only what it runs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from modules.cli import COMMANDS

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("command", sorted(COMMANDS))
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
    assert expected <= set(COMMANDS)


def test_agent_command_does_not_import_the_publisher() -> None:
    code = (
        "import sys; from modules.cli import main; "
        "rc = main(['agent', 'status', '--port', '1']); "
        "print(sorted(m for m in sys.modules if m.startswith('publisher')))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert proc.stdout.strip().splitlines()[-1] == "[]", proc.stdout
