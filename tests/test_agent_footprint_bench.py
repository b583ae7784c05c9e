"""`bench/agent_footprint.py` keeps running: a real agent on the embedded hub, idle and with one
module, reported against the import floor in the same run. The figures themselves are the
bench's business (a noisy machine makes them no test); what is checked is that every row is
measured and printed, so the bench cannot rot unnoticed."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench" / "agent_footprint.py"


@pytest.mark.timeout(600)
def test_the_footprint_bench_measures_every_row() -> None:
    done = subprocess.run(
        [sys.executable, str(BENCH), "--runs", "1", "--idle-seconds", "1"],
        cwd=ROOT, capture_output=True, text=True, timeout=540,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    floor = re.search(r"reference floor .*: ([\d.]+) MiB RSS", out)
    idle = re.search(r"agent idle, no modules: +([\d.]+) MiB RSS = ([\d.]+)x floor", out)
    one = re.search(r"agent with one module: +([\d.]+) MiB RSS = ([\d.]+)x floor", out)
    assert floor and idle and one, out
    assert float(floor.group(1)) > 0 and float(idle.group(1)) > float(floor.group(1))
    assert float(one.group(1)) > 0 and "the module's scoring process" in out


def test_the_footprint_breakdown_lists_the_daemons_steps() -> None:
    done = subprocess.run(
        [sys.executable, str(BENCH), "--breakdown"], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stdout + done.stderr
    steps = [line for line in done.stdout.splitlines() if re.match(r"^ +-?[\d.]+ MiB  ", line)]
    assert len(steps) == 7, done.stdout
    assert "in all, before the agent runs" in steps[-1]
