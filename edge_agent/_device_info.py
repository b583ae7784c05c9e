"""Facts about the device for reported state, gathered without importing heavy libraries.

ONNX Runtime's provider list is read in a short-lived child process: importing onnxruntime in
the agent would cost tens of MB of resident memory for the daemon's whole life. The probe runs
once per interpreter and process (what is installed does not change under a running agent), so
agents sharing a process (the simulator) or an agent restarted in-process do not pay it again.

Memory and free disk are sampled, not watched: a report reuses a sample for `SAMPLE_S` seconds,
so a burst of reports (or a thousand agents in one process) reads `/proc/meminfo` and the disk
once rather than once each.
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import re
import shutil
import sys
import time
from functools import cache
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from modules.device_state import DeviceInfo

SAMPLE_S = 5.0
_MEMINFO_RE = re.compile(r"^(\w+):\s+(\d+) kB", re.M)

# python executable -> the providers its onnxruntime offers
_providers: dict[str, list[str]] = {}
# (event loop, python executable) -> the probe under way, which concurrent callers share
_probing: dict[tuple[int, str], asyncio.Future[list[str]]] = {}
# (monotonic time taken, (total, available))
_memory: tuple[float, tuple[int | None, int | None]] | None = None
# file system (st_dev) -> (when sampled, free bytes); data folder -> its file system
_disk: dict[int, tuple[float, int | None]] = {}
_filesystem: dict[Path, int] = {}


@cache
def agent_version() -> str:
    try:
        return version("modelfleet")
    except PackageNotFoundError:
        return "0+unknown"


@cache
def _platform() -> tuple[str, str]:
    return f"{platform.system()} {platform.release()} {platform.machine()}", platform.python_version()


async def execution_providers(python: str = sys.executable) -> list[str]:
    known = _providers.get(python)
    if known is not None:
        return list(known)
    loop = asyncio.get_running_loop()
    key = (id(loop), python)
    probing = _probing.get(key)
    if probing is None or probing.get_loop() is not loop:
        probing = loop.create_task(_probe(python))
        _probing[key] = probing
        probing.add_done_callback(lambda _task: _probing.pop(key, None))
    return list(await asyncio.shield(probing))


async def _probe(python: str) -> list[str]:
    code = "import json, onnxruntime as o; print(json.dumps(o.get_available_providers()))"
    try:
        proc = await asyncio.create_subprocess_exec(
            python, "-c", code, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL
        )
        out, _ = await asyncio.wait_for(proc.communicate(), timeout=30)
    except (OSError, TimeoutError):
        return []  # not kept: the next start probes again
    try:
        found = list(json.loads(out)) if proc.returncode == 0 else []
    except ValueError:
        found = []
    _providers[python] = found  # an answer, even "none", holds for the life of the process
    return found


def _meminfo() -> tuple[int | None, int | None]:
    global _memory
    at = time.monotonic()
    if _memory is not None and at - _memory[0] < SAMPLE_S:
        return _memory[1]
    try:
        text = Path("/proc/meminfo").read_text()
    except OSError:
        values: dict[str, int] = {}
    else:
        values = {m[1]: int(m[2]) * 1024 for m in _MEMINFO_RE.finditer(text)}
    sample = values.get("MemTotal"), values.get("MemAvailable")
    _memory = (at, sample)
    return sample


def _disk_free(data_dir: Path) -> int | None:
    """Free bytes where `data_dir` lives, sampled per file system: agents sharing one (a simulated
    fleet's thousands of data folders) share one `statvfs` per `SAMPLE_S`, not one each."""
    at = time.monotonic()
    device = _filesystem.get(data_dir)
    if device is None:
        try:
            device = os.stat(data_dir).st_dev
        except OSError:
            return None
        if len(_filesystem) > 65536:  # folders of agents long gone
            _filesystem.clear()
        _filesystem[data_dir] = device
    known = _disk.get(device)
    if known is not None and at - known[0] < SAMPLE_S:
        return known[1]
    try:
        free: int | None = shutil.disk_usage(data_dir).free
    except OSError:
        free = None
    _disk[device] = (at, free)
    return free


def device_info(data_dir: Path, providers: list[str], public_key: str | None = None) -> DeviceInfo:
    total, available = _meminfo()
    system, python = _platform()
    return DeviceInfo(
        agent_version=agent_version(),
        platform=system,
        python=python,
        execution_providers=providers,
        public_key=public_key,
        disk_free_bytes=_disk_free(data_dir),
        memory_total_bytes=total,
        memory_available_bytes=available,
    )
