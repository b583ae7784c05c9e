"""The environment the IoT Hub tests run the agent in: modelfleet with its `azure` extra.

`azure-iot-device` 2.14 pins `paho-mqtt < 2` while the suite's own environment has paho 2.x, so
the SDK cannot be imported by the test process. The agent under test runs instead as a
subprocess of a venv built here the first time a test needs it: modelfleet installed editable
from this checkout with its `cpu` and `azure` extras, which resolves paho-mqtt 1.6 beside the
SDK. That is exactly what a device installing `modelfleet[azure]` gets, so the tests prove the
MQTT client and the IoT Hub transport work on the paho CI does not otherwise run.

Cached under `.pytest_cache/azureiot-venvs/` (git-ignored with the rest of pytest's cache),
keyed by what is installed; `rm -r` it to rebuild. A venv that cannot be built fails the test
with pip's own words; it never skips.
"""

from __future__ import annotations

import fcntl
import hashlib
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CACHE = ROOT / ".pytest_cache" / "azureiot-venvs"
SDK_VERSION = "2.14.0"
PAHO_VERSION = "1.6.1"
# Pinned so that what CI proves is what the docs name; the extra itself allows later releases.
PACKAGES = (f"azure-iot-device=={SDK_VERSION}", f"paho-mqtt=={PAHO_VERSION}")
EXTRAS = "cpu,azure"


def sdk_python() -> Path:
    """The interpreter of the venv (built once, then reused; a lock keeps two test processes
    from building it at once, and a marker written last means a venv cut short is rebuilt)."""
    key = hashlib.sha256("\n".join((*PACKAGES, EXTRAS)).encode()).hexdigest()[:12]
    venv = CACHE / f"sdk-{key}"
    python = venv / "bin" / "python"
    marker = venv / ".complete"
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / f"sdk-{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not marker.exists():
            shutil.rmtree(venv, ignore_errors=True)
            started = time.monotonic()
            steps = [
                [sys.executable, "-m", "venv", str(venv)],
                [
                    str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check",
                    "-e", f"{ROOT}[{EXTRAS}]", *PACKAGES,
                ],
            ]  # fmt: skip
            for step in steps:
                done = subprocess.run(step, capture_output=True, text=True, timeout=1200)
                if done.returncode != 0:
                    pytest.fail(
                        f"could not build the azure-iot-device venv (is the package index reachable?):\n"
                        f"{(done.stderr or done.stdout)[-3000:]}",
                        pytrace=False,
                    )
            marker.write_text(
                f"{' '.join(PACKAGES)} [{EXTRAS}]\nbuilt in {time.monotonic() - started:.0f} s\n"
            )
    versions = subprocess.run(
        [
            str(python),
            "-c",
            "from importlib.metadata import version as v; print(v('paho-mqtt'), v('azure-iot-device'))",
        ],
        capture_output=True,
        text=True,
    )
    assert versions.stdout.split() == [PAHO_VERSION, SDK_VERSION], versions.stderr[-2000:]
    return python
