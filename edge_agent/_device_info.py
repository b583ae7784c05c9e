"""Facts about the device for reported state, gathered without importing heavy libraries.

ONNX Runtime's provider list is read in a short-lived child process: importing onnxruntime in
the agent would cost tens of MB of resident memory for the daemon's whole life.
"""

from __future__ import annotations

import asyncio
import json
import platform
import re
import shutil
import sys
from functools import cache
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from modules.device_state import DeviceInfo


@cache
def agent_version() -> str:
    try:
        return version("modelfleet")
    except PackageNotFoundError:
        return "0+unknown"


async def execution_providers(python: str = sys.executable) -> list[str]:
    code = "import json, onnxruntime as o; print(json.dumps(o.get_available_providers()))"
    try:
        proc = await asyncio.create_subprocess_exec(
            python, "-c", code, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL
        )
        out, _ = await asyncio.wait_for(proc.communicate(), timeout=30)
        return list(json.loads(out)) if proc.returncode == 0 else []
    except (OSError, TimeoutError, ValueError):
        return []


def _meminfo() -> tuple[int | None, int | None]:
    try:
        text = Path("/proc/meminfo").read_text()
    except OSError:
        return None, None
    values = {m[1]: int(m[2]) * 1024 for m in re.finditer(r"^(\w+):\s+(\d+) kB", text, re.M) if m}
    return values.get("MemTotal"), values.get("MemAvailable")


def device_info(data_dir: Path, providers: list[str], public_key: str | None = None) -> DeviceInfo:
    total, available = _meminfo()
    try:
        free = shutil.disk_usage(data_dir).free
    except OSError:
        free = None
    return DeviceInfo(
        agent_version=agent_version(),
        platform=f"{platform.system()} {platform.release()} {platform.machine()}",
        python=platform.python_version(),
        execution_providers=providers,
        public_key=public_key,
        disk_free_bytes=free,
        memory_total_bytes=total,
        memory_available_bytes=available,
    )
