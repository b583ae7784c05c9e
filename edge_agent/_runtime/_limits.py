"""Resource limits for process modules: the kernel's through a cgroup where the agent may make one
(`_cgroup`), else the runtime's own, described here.

Devices often run the agent where it may not create a cgroup with the memory controller (a
container, a read-only cgroupfs, a delegated v2 tree without `memory`), so there the process
runtime enforces `resources` itself:

- **memory_mb**: the module's resident memory (its process and their children) is read every
  `WATCH_PERIOD_S`; above the limit the module is killed and reported `out of memory`, and the
  agent and the other modules carry on. `RLIMIT_DATA` at the limit plus `DATA_HEADROOM_MB` is a
  backstop against an allocation burst between two reads (the headroom covers what ONNX Runtime
  and glibc reserve but never touch: thread stacks and malloc arenas count as data).
- **cpus**: the module is pinned to `ceil(cpus)` CPUs (`sched_setaffinity`), the nearest an
  rlimit-only host gets to a CPU share.

`describe()` says which is in force for each limit; it appears in the module's reported state.
"""

from __future__ import annotations

import contextlib
import math
import os
import resource
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from modules.spec import Resources

if TYPE_CHECKING:  # `_cgroup` loads at the first module with limits, not with the agent
    from ._cgroup import ModuleGroup

WATCH_PERIOD_S = 0.5
DATA_HEADROOM_MB = 1024

# What enforces process modules' limits: a cgroup where possible else rlimits, a cgroup or the
# module fails, rlimits only.
ModuleLimits = Literal["auto", "cgroup", "rlimit"]


def describe(resources: Resources | None, group: ModuleGroup | None = None) -> str | None:
    """The limits and what enforces each: `group` (the module's cgroup) or the runtime itself."""
    if resources is None or (resources.memory_mb is None and resources.cpus is None):
        return None
    parts = []
    if kernel_memory(group):
        assert group is not None
        parts.append(f"memory {group.memory_mb} MiB (cgroup v{group.version} {group.memory_file})")
    elif resources.memory_mb is not None:
        parts.append(f"memory {resources.memory_mb} MiB (resident-memory watch, RLIMIT_DATA backstop)")
    if group is not None and group.cpu is not None and group.cpus is not None:
        parts.append(f"cpus {group.cpus:g} (cgroup v{group.version} {group.cpu_file})")
    elif resources.cpus is not None:
        parts.append(f"cpus {resources.cpus:g} (pinned to {_cpu_count(resources.cpus)} CPUs)")
    return "; ".join(parts)


def kernel_memory(group: ModuleGroup | None) -> bool:
    """Whether the kernel holds the module's memory (no watch, no RLIMIT_DATA needed)."""
    return group is not None and group.memory is not None and group.memory_mb is not None


def apply(pid: int, resources: Resources | None, group: ModuleGroup | None = None) -> None:
    """Set on a just-started module process (its children inherit them) the limits that its
    cgroup `group`, if any, does not already hold."""
    if resources is None:
        return
    if resources.memory_mb is not None and not kernel_memory(group):
        limit = (resources.memory_mb + DATA_HEADROOM_MB) * 1024 * 1024
        with contextlib.suppress(OSError, ValueError):
            resource.prlimit(pid, resource.RLIMIT_DATA, (limit, limit))
    if resources.cpus is not None and (group is None or group.cpus is None):
        available = sorted(os.sched_getaffinity(0))
        chosen = available[: _cpu_count(resources.cpus)]
        with contextlib.suppress(OSError):
            os.sched_setaffinity(pid, chosen)


def _cpu_count(cpus: float) -> int:
    return max(1, min(math.ceil(cpus), len(os.sched_getaffinity(0))))


def resident_bytes(pid: int) -> int:
    """Resident memory of `pid` and all its descendants (0 once it is gone)."""
    total = 0
    pending = [pid]
    seen: set[int] = set()
    while pending:
        current = pending.pop()
        if current in seen:
            continue
        seen.add(current)
        try:
            for line in Path(f"/proc/{current}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
                    break
            for task in Path(f"/proc/{current}/task").iterdir():
                children = (task / "children").read_text().split()
                pending.extend(int(child) for child in children)
        except (OSError, ValueError):
            continue
    return total
