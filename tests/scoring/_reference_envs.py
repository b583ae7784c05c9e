"""Virtual environments for the reference servers and clients the scoring tests compare against.

Azure's `azureml-inference-server-http` pins Flask and gunicorn, and `kserve` pins FastAPI,
pydantic and more: neither may meet the project's own environment. Each gets its own venv,
built by the tests the first time they need it and cached under `.pytest_cache/scoring-venvs/`
(git-ignored with the rest of pytest's cache), keyed by what was asked to be installed, so a
later run (and a later session on the same machine) starts at once. `rm -r` the folder to
rebuild.

Installing needs the package index: a venv that cannot be built fails the test with pip's own
words; it never skips.
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
CACHE = ROOT / ".pytest_cache" / "scoring-venvs"

AZUREML_SERVER = "azureml-inference-server-http==1.5.1"
# What the shared test scripts import besides the server itself (the reference must run them
# unchanged): ONNX Runtime for the models, Pillow for the image script, pandas for schemas.
AZUREML_PACKAGES = (AZUREML_SERVER, "onnxruntime", "numpy", "pillow", "pandas")
KSERVE_PACKAGES = ("kserve==0.21.0",)


def reference_python(name: str, packages: tuple[str, ...]) -> Path:
    """The interpreter of a venv holding `packages`; built once, then reused across runs.

    A lock file keeps two test processes from building the same venv at once; a marker written
    last means a venv cut short by a timeout is rebuilt rather than trusted.
    """
    key = hashlib.sha256("\n".join(packages).encode()).hexdigest()[:12]
    venv = CACHE / f"{name}-{key}"
    python = venv / "bin" / "python"
    marker = venv / ".complete"
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / f"{name}-{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if marker.exists():
            return python
        shutil.rmtree(venv, ignore_errors=True)
        started = time.monotonic()
        steps = [
            [sys.executable, "-m", "venv", str(venv)],
            [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", *packages],
        ]
        for step in steps:
            done = subprocess.run(step, capture_output=True, text=True, timeout=1200)
            if done.returncode != 0:
                _unavailable(
                    f"could not build the {name} venv ({' '.join(packages)}):\n{done.stderr[-3000:]}"
                )
        marker.write_text(f"{' '.join(packages)}\nbuilt in {time.monotonic() - started:.0f} s\n")
    return python


def _unavailable(reason: str) -> None:
    """A reference that cannot be installed fails the test, never skips it."""
    pytest.fail(f"{reason}\nThe reference server is required: the package index must be reachable.")
