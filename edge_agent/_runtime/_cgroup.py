"""Kernel-enforced limits for process modules: one cgroup per module, where the agent may make one.

A module's memory limit held by the kernel cannot be outrun by an allocation burst and needs no
polling, so the process runtime puts each module with `resources` in a group of its own when the
agent's cgroup lets it:

- **cgroup v2**: the agent's cgroup must list `memory` in `cgroup.controllers`. As a cgroup with
  processes in it cannot hand controllers to its children ("no internal processes"), the agent
  first moves itself into a leaf `<agent cgroup>/agent`, then enables `+memory` (and `+cpu`) in
  `<agent cgroup>/cgroup.subtree_control`, and makes module groups beside the leaf: the layout
  systemd's `Delegate=` expects. Another process in the agent's cgroup (the agent does not own it
  then) or any refused write gives up on cgroups, leaving the agent where it was.
- **cgroup v1**: groups under the agent's own group in the memory hierarchy (and in the cpu
  hierarchy for `cpus`, when that one is writable too).

Detection reads a few small files once, at the first module with limits; nothing here runs while
the agent idles. Every failure is a `CgroupUnavailable` with the reason, and the caller falls back
to the rlimit enforcement in `_limits`.
"""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

log = logging.getLogger("modelfleet.agent.runtime")

CGROUP_ROOT = Path("/sys/fs/cgroup")
MODULE_PREFIX = "module-"
AGENT_LEAF = "agent"  # v2: where the agent's own process goes so its cgroup may delegate
CPU_PERIOD_US = 100_000


class CgroupUnavailable(Exception):
    """The agent cannot (or may not) make a module's cgroup; the message says why."""


def _rmdir(folder: Path) -> None:
    """Remove a group: the kernel takes its interface files with it, and refuses (EBUSY) while a
    process is in it. A seam for tests on a plain folder tree."""
    folder.rmdir()


def _write(path: Path, value: str) -> None:
    try:
        path.write_text(value)
    except OSError as exc:
        raise CgroupUnavailable(f"cannot write {value!r} to {path}: {exc.strerror or exc}") from None


def _parse(cgroup_text: str) -> tuple[dict[str, str], str | None]:
    """/proc/<pid>/cgroup as {v1 controller: path} and the v2 (unified) path, if any."""
    v1: dict[str, str] = {}
    unified = None
    for line in cgroup_text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        hierarchy, controllers, path = parts
        if hierarchy == "0" and controllers == "":
            unified = path
            continue
        for controller in controllers.split(","):
            if controller:
                v1[controller] = path
    return v1, unified


def _v1_mount(root: Path, controller: str) -> Path | None:
    """The v1 hierarchy holding `controller` (`memory`, or `cpu` also mounted as `cpu,cpuacct`)."""
    direct = root / controller
    if (direct / "cgroup.procs").exists():
        return direct
    with contextlib.suppress(OSError):
        for entry in root.iterdir():
            if controller in entry.name.split(",") and (entry / "cgroup.procs").exists():
                return entry
    return None


def _unified_mount(root: Path) -> Path:
    """`root` itself on a v2-only host, `root/unified` on a hybrid one."""
    return root if (root / "cgroup.controllers").exists() else root / "unified"


def _inside(base: Path, path: str) -> Path:
    return base / path.lstrip("/") if path.strip("/") else base


@dataclass
class ModuleGroup:
    """One module's cgroup (v2: one folder; v1: one in the memory, maybe one in the cpu hierarchy)."""

    version: Literal[1, 2]
    memory: Path | None  # the group in the memory hierarchy (v2: the module's one group)
    cpu: Path | None  # the group in the cpu hierarchy (v2: the same folder)
    memory_mb: int | None = None  # the kernel holds the module to this; None: not limited here
    cpus: float | None = None  # likewise for CPU time; None: not limited here

    @property
    def folders(self) -> list[Path]:
        return list(dict.fromkeys(p for p in (self.memory, self.cpu) if p is not None))

    @property
    def memory_file(self) -> str:
        return "memory.max" if self.version == 2 else "memory.limit_in_bytes"

    @property
    def cpu_file(self) -> str:
        return "cpu.max" if self.version == 2 else "cpu.cfs_quota_us"

    def add(self, pid: int) -> None:
        """Move `pid` in; its later children are born inside."""
        for folder in self.folders:
            _write(folder / "cgroup.procs", str(pid))

    def oom_kills(self) -> int:
        """How many of its processes the kernel's OOM killer has ended (0 when unknown)."""
        if self.memory is None:
            return 0
        name = "memory.events" if self.version == 2 else "memory.oom_control"
        try:
            for line in (self.memory / name).read_text().splitlines():
                key, _, value = line.partition(" ")
                if key == "oom_kill":
                    return int(value)
            # v1 before Linux 4.13 has no oom_kill count: the limit was hit, which is the best sign
            return int((self.memory / "memory.failcnt").read_text()) if self.version == 1 else 0
        except (OSError, ValueError):
            return 0

    def oom_reason(self) -> str:
        return (
            f"out of memory: killed by the kernel at memory_mb {self.memory_mb} "
            f"(cgroup v{self.version} {self.memory_file})"
        )

    def remove(self) -> bool:
        """Remove the group once its processes are gone (the kernel refuses before); True when gone."""
        gone = True
        for folder in self.folders:
            try:
                _rmdir(folder)
            except FileNotFoundError:
                pass
            except OSError:
                gone = False
        return gone


@dataclass
class Controllers:
    """Where this agent makes module groups (the parents of `module-<instance id>`)."""

    version: Literal[1, 2]
    memory: Path
    cpu: Path | None  # None: cpus stay with sched_setaffinity

    def describe(self) -> str:
        where = f"cgroup v{self.version} memory under {self.memory}"
        return where + (f", cpu under {self.cpu}" if self.cpu is not None else ", cpus by CPU affinity")

    def create(self, instance_id: str, memory_mb: int | None, cpus: float | None) -> ModuleGroup:
        """A fresh group with the limits set, before any process is in it."""
        name = MODULE_PREFIX + instance_id
        memory = self.memory / name if memory_mb is not None else None
        cpu = None
        if cpus is not None and self.cpu is not None:
            cpu = self.cpu / name
        group = ModuleGroup(self.version, memory, cpu, memory_mb, cpus if cpu is not None else None)
        if not group.folders:
            return group
        try:
            for folder in group.folders:
                _make(folder)
            if memory is not None and memory_mb is not None:
                self._limit_memory(memory, memory_mb << 20)
            if cpu is not None and cpus is not None:
                quota = max(1000, round(cpus * CPU_PERIOD_US))
                if self.version == 2:
                    _write(cpu / "cpu.max", f"{quota} {CPU_PERIOD_US}")
                else:
                    _write(cpu / "cpu.cfs_period_us", str(CPU_PERIOD_US))
                    _write(cpu / "cpu.cfs_quota_us", str(quota))
        except CgroupUnavailable:
            group.remove()
            raise
        return group

    def _limit_memory(self, folder: Path, limit: int) -> None:
        if self.version == 2:
            _write(folder / "memory.max", str(limit))
            if (folder / "memory.swap.max").exists():  # no swap to grow into past the limit
                _write(folder / "memory.swap.max", "0")
            if (folder / "memory.oom.group").exists():  # an OOM kill takes the whole module
                _write(folder / "memory.oom.group", "1")
        else:
            _write(folder / "memory.limit_in_bytes", str(limit))
            if (folder / "memory.memsw.limit_in_bytes").exists():  # memory+swap: no swapping past it
                _write(folder / "memory.memsw.limit_in_bytes", str(limit))

    def sweep(self) -> int:
        """Remove empty module groups left by instances that are gone; a busy one stays (the kernel
        refuses to remove a group with processes, such as a module the agent will re-adopt)."""
        removed = 0
        for parent in dict.fromkeys(p for p in (self.memory, self.cpu) if p is not None):
            with contextlib.suppress(OSError):
                for folder in parent.glob(MODULE_PREFIX + "*"):
                    with contextlib.suppress(OSError):
                        _rmdir(folder)
                        removed += 1
        return removed


def _make(folder: Path) -> None:
    try:
        folder.mkdir()
    except FileExistsError:
        # Left by an instance of that id that is gone (then empty), or in use by another agent.
        try:
            _rmdir(folder)
            folder.mkdir()
        except OSError as exc:
            raise CgroupUnavailable(f"{folder} exists and is in use ({exc.strerror or exc})") from None
    except OSError as exc:
        raise CgroupUnavailable(f"cannot create {folder}: {exc.strerror or exc}") from None


def detect(cgroup_text: str, root: Path = CGROUP_ROOT, pid: int | None = None) -> Controllers:
    """Where module groups can be made for the process `pid` (the agent) whose /proc/<pid>/cgroup
    reads `cgroup_text`; v2 delegation (moving `pid` into its leaf) happens here, once."""
    pid = os.getpid() if pid is None else pid
    v1, unified = _parse(cgroup_text)
    if "memory" in v1:  # the memory controller is bound to a v1 hierarchy (v1 or hybrid host)
        return _detect_v1(v1, root)
    if unified is not None:
        return _detect_v2(_inside(_unified_mount(root), unified), pid)
    raise CgroupUnavailable("no memory controller in the agent's cgroups")


def _detect_v1(v1: dict[str, str], root: Path) -> Controllers:
    mount = _v1_mount(root, "memory")
    if mount is None:
        raise CgroupUnavailable(f"the v1 memory hierarchy is not mounted under {root}")
    memory = _inside(mount, v1["memory"])
    if not (memory / "memory.limit_in_bytes").exists():
        raise CgroupUnavailable(f"the agent's memory cgroup {memory} is not visible")
    if not os.access(memory, os.W_OK):
        raise CgroupUnavailable(f"the agent may not create groups in {memory}")
    cpu = None
    cpu_mount = _v1_mount(root, "cpu") if "cpu" in v1 else None
    if cpu_mount is not None:
        candidate = _inside(cpu_mount, v1["cpu"])
        if (candidate / "cpu.cfs_quota_us").exists() and os.access(candidate, os.W_OK):
            cpu = candidate
    return Controllers(1, memory, cpu)


def _detect_v2(agent: Path, pid: int) -> Controllers:
    # Already set up by this process (or an earlier detection): the agent sits in the leaf.
    if agent.name == AGENT_LEAF and "memory" in _words(agent.parent / "cgroup.subtree_control"):
        parent = agent.parent
        return Controllers(2, parent, parent if "cpu" in _words(parent / "cgroup.subtree_control") else None)
    controllers = _words(agent / "cgroup.controllers")
    if "memory" not in controllers:
        raise CgroupUnavailable(f"the memory controller is not delegated to {agent}")
    try:
        others = [p for p in (agent / "cgroup.procs").read_text().split() if int(p) != pid]
    except (OSError, ValueError) as exc:
        raise CgroupUnavailable(f"cannot read {agent / 'cgroup.procs'}: {exc}") from None
    if others:
        raise CgroupUnavailable(f"{agent} also holds other processes ({', '.join(others[:5])})")
    leaf = agent / AGENT_LEAF
    moved = False
    try:
        with contextlib.suppress(FileExistsError):
            _make_plain(leaf)
        _write(leaf / "cgroup.procs", str(pid))
        moved = True
        _write(agent / "cgroup.subtree_control", "+memory")
    except CgroupUnavailable:
        if moved:  # back where it was, so nothing changed
            with contextlib.suppress(OSError):
                (agent / "cgroup.procs").write_text(str(pid))
        with contextlib.suppress(OSError):
            _rmdir(leaf)
        raise
    cpu = None
    if "cpu" in controllers:
        try:
            _write(agent / "cgroup.subtree_control", "+cpu")
            cpu = agent
        except CgroupUnavailable as exc:
            log.info("cpus by CPU affinity: %s", exc)
    return Controllers(2, agent, cpu)


def _make_plain(folder: Path) -> None:
    try:
        folder.mkdir()
    except FileExistsError:
        raise
    except OSError as exc:
        raise CgroupUnavailable(f"cannot create {folder}: {exc.strerror or exc}") from None


def _words(path: Path) -> list[str]:
    try:
        return path.read_text().split()
    except OSError:
        return []


def find(pid: int, root: Path = CGROUP_ROOT, cgroup_text: str | None = None) -> ModuleGroup | None:
    """The module group a running process sits in (a module re-adopted after an agent restart),
    with its limits read back; None when it is in none of ours."""
    if cgroup_text is None:
        try:
            cgroup_text = Path(f"/proc/{pid}/cgroup").read_text()
        except OSError:
            return None
    v1, unified = _parse(cgroup_text)

    def ours(path: str | None) -> bool:
        return path is not None and path.rstrip("/").rsplit("/", 1)[-1].startswith(MODULE_PREFIX)

    if "memory" in v1:
        memory_mount = _v1_mount(root, "memory")
        cpu_mount = _v1_mount(root, "cpu") if ours(v1.get("cpu")) else None
        memory = _inside(memory_mount, v1["memory"]) if memory_mount and ours(v1["memory"]) else None
        cpu = _inside(cpu_mount, v1["cpu"]) if cpu_mount is not None else None
        if memory is None and cpu is None:
            return None
        group = ModuleGroup(1, memory, cpu)
    elif ours(unified):
        assert unified is not None
        folder = _inside(_unified_mount(root), unified)
        group = ModuleGroup(2, folder, folder)
    else:
        return None
    group.memory_mb = _read_memory_mb(group)
    group.cpus = _read_cpus(group)
    return group


def _read_memory_mb(group: ModuleGroup) -> int | None:
    if group.memory is None:
        return None
    text = " ".join(_words(group.memory / group.memory_file))
    if not text.isdigit() or int(text) >= 1 << 62:  # "max" or v1's "unlimited" (near 2**63)
        return None
    return int(text) >> 20


def _read_cpus(group: ModuleGroup) -> float | None:
    if group.cpu is None:
        return None
    words = _words(group.cpu / group.cpu_file)
    try:
        if group.version == 2:
            return None if not words or words[0] == "max" else int(words[0]) / int(words[1])
        quota = int(words[0])
        period = int(" ".join(_words(group.cpu / "cpu.cfs_period_us")))
        return None if quota <= 0 else quota / period
    except (ValueError, IndexError, ZeroDivisionError):
        return None


_detected: Controllers | CgroupUnavailable | None = None


def for_this_process() -> Controllers:
    """`detect()` for the agent, once per process (several runtimes in one process share it); the
    first call also removes module groups that instances no longer use."""
    global _detected
    if _detected is None:
        try:
            _detected = detect(Path("/proc/self/cgroup").read_text())
            removed = _detected.sweep()
            if removed:
                log.info("removed %d module cgroups left by instances that are gone", removed)
        except OSError as exc:
            _detected = CgroupUnavailable(f"cannot read /proc/self/cgroup: {exc}")
        except CgroupUnavailable as exc:
            _detected = exc
    if isinstance(_detected, CgroupUnavailable):
        raise _detected
    return _detected
