"""Fails its readiness on the devices whose data folder holds a FAIL_READINESS marker.

The module runs with its code folder (inside the agent's data folder) as working directory, so
the marker makes init() raise on exactly the devices a test marked, and nowhere else.
"""

from pathlib import Path


def init():
    here = Path.cwd().resolve()
    for folder in (here, *here.parents):
        if (folder / "FAIL_READINESS").exists():
            raise RuntimeError(f"readiness fails on this device ({folder / 'FAIL_READINESS'})")


def run(raw_data):
    return {"ok": True}
