"""Module cgroups: v2 delegation against a folder tree laid out like cgroupfs, and real groups in
this machine's memory controller."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import shutil
from pathlib import Path

import aiohttp
import pytest

from edge_agent._config import load_agent_config
from edge_agent._runtime import Backoff, ModuleStartError, ProcessRuntime, Supervisor
from edge_agent._runtime import _cgroup as cgroups
from modules import ConfigError
from modules.device_state import ModuleState
from modules.spec import Resources
from tests.edge_agent.test_runtime_process import gone, make_config, write_script
from tests.edge_agent.test_runtime_supervisor import HOG_SCRIPT, _kernel_memory_here, _until

AGENT_PID = 4242
SERVICE = "/system.slice/modelfleet-agent.service"


def _fake_rmdir(folder: Path) -> None:
    """What the kernel does on rmdir of a cgroup: refused while a process is in it, else the
    group goes with its interface files."""
    if not folder.exists():
        raise FileNotFoundError(errno.ENOENT, "no such group", str(folder))
    procs = folder / "cgroup.procs"
    if procs.exists() and procs.read_text().split():
        raise OSError(errno.EBUSY, "busy", str(folder))
    shutil.rmtree(folder)


@pytest.fixture
def v2_tree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path, list[tuple[str, str]]]:
    """A v2-only cgroupfs: the agent alone in its service's cgroup, with memory and cpu available.
    Returns the root, the agent's cgroup, and every write the code makes, in order."""
    root = tmp_path / "cgroup"
    root.mkdir()
    (root / "cgroup.controllers").write_text("cpuset cpu io memory pids\n")
    agent = root / SERVICE.lstrip("/")
    agent.mkdir(parents=True)
    (agent / "cgroup.controllers").write_text("cpu memory pids\n")
    (agent / "cgroup.subtree_control").write_text("")
    (agent / "cgroup.procs").write_text(f"{AGENT_PID}\n")
    writes: list[tuple[str, str]] = []
    original = cgroups._write

    def recording(path: Path, value: str) -> None:
        writes.append((str(path.relative_to(root)), value))
        original(path, value)

    monkeypatch.setattr(cgroups, "_write", recording)
    monkeypatch.setattr(cgroups, "_rmdir", _fake_rmdir)
    return root, agent, writes


def _detect(root: Path) -> cgroups.Controllers:
    return cgroups.detect(f"0::{SERVICE}\n", root=root, pid=AGENT_PID)


def test_v2_delegation_moves_the_agent_into_a_leaf_before_enabling_controllers(v2_tree) -> None:  # type: ignore[no-untyped-def]
    root, agent, writes = v2_tree
    found = _detect(root)
    assert (found.version, found.memory, found.cpu) == (2, agent, agent)
    service = SERVICE.lstrip("/")
    assert writes == [
        (f"{service}/agent/cgroup.procs", str(AGENT_PID)),  # out of the way first ...
        (f"{service}/cgroup.subtree_control", "+memory"),  # ... then the controllers for children
        (f"{service}/cgroup.subtree_control", "+cpu"),
    ]
    writes.clear()
    group = found.create("iris-1", memory_mb=200, cpus=1.5)
    group.add(5151)
    assert group.memory == group.cpu == agent / "module-iris-1"
    assert writes == [
        (f"{service}/module-iris-1/memory.max", str(200 << 20)),
        (f"{service}/module-iris-1/cpu.max", "150000 100000"),
        (f"{service}/module-iris-1/cgroup.procs", "5151"),
    ]


def test_v2_sets_no_swap_and_group_oom_where_the_kernel_has_them(v2_tree, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    root, _, writes = v2_tree
    found = _detect(root)
    real_make = cgroups._make

    def make_with_files(folder: Path) -> None:  # what the kernel populates a new group with
        real_make(folder)
        for name in ("memory.max", "memory.swap.max", "memory.oom.group", "memory.events", "cgroup.procs"):
            (folder / name).write_text("")

    monkeypatch.setattr(cgroups, "_make", make_with_files)
    writes.clear()
    group = found.create("hog-1", memory_mb=64, cpus=None)
    assert [w for w in writes if w[0].startswith(SERVICE.lstrip("/") + "/module-hog-1/")] == [
        (f"{SERVICE.lstrip('/')}/module-hog-1/memory.max", str(64 << 20)),
        (f"{SERVICE.lstrip('/')}/module-hog-1/memory.swap.max", "0"),
        (f"{SERVICE.lstrip('/')}/module-hog-1/memory.oom.group", "1"),
    ]
    assert group.cpu is None and group.cpus is None
    (group.memory / "memory.events").write_text("low 0\nhigh 0\nmax 12\noom 1\noom_kill 1\n")  # type: ignore[operator]
    assert group.oom_kills() == 1
    assert group.oom_reason() == "out of memory: killed by the kernel at memory_mb 64 (cgroup v2 memory.max)"


def test_v2_gives_up_when_another_process_sits_in_the_agents_cgroup(v2_tree) -> None:  # type: ignore[no-untyped-def]
    root, agent, writes = v2_tree
    (agent / "cgroup.procs").write_text(f"{AGENT_PID}\n999\n")
    with pytest.raises(cgroups.CgroupUnavailable, match="other processes"):
        _detect(root)
    assert writes == [] and not (agent / "agent").exists()


def test_v2_gives_up_without_the_memory_controller(v2_tree) -> None:  # type: ignore[no-untyped-def]
    root, agent, writes = v2_tree
    (agent / "cgroup.controllers").write_text("cpu pids\n")
    with pytest.raises(cgroups.CgroupUnavailable, match="memory controller is not delegated"):
        _detect(root)
    assert writes == [] and not (agent / "agent").exists()


def test_v2_a_refused_subtree_control_puts_the_agent_back(v2_tree) -> None:  # type: ignore[no-untyped-def]
    root, agent, _ = v2_tree
    (agent / "cgroup.subtree_control").unlink()
    (agent / "cgroup.subtree_control").mkdir()  # any write to it fails, as EBUSY would
    with pytest.raises(cgroups.CgroupUnavailable, match="subtree_control"):
        _detect(root)
    assert (agent / "cgroup.procs").read_text() == str(AGENT_PID)


def test_v2_without_cpu_keeps_cpus_to_affinity(v2_tree) -> None:  # type: ignore[no-untyped-def]
    root, agent, _ = v2_tree
    (agent / "cgroup.controllers").write_text("memory pids\n")
    found = _detect(root)
    group = found.create("iris-1", memory_mb=100, cpus=2.0)
    assert group.cpu is None and group.cpus is None
    assert (agent / "module-iris-1" / "memory.max").read_text() == str(100 << 20)


def test_v2_detection_again_finds_the_agent_in_its_leaf(v2_tree) -> None:  # type: ignore[no-untyped-def]
    root, agent, writes = v2_tree
    _detect(root)
    (agent / "cgroup.subtree_control").write_text("cpu memory\n")  # as the kernel shows it
    writes.clear()
    again = cgroups.detect(f"0::{SERVICE}/agent\n", root=root, pid=AGENT_PID)
    assert (again.memory, again.cpu) == (agent, agent) and writes == []


def test_v2_module_group_is_removed_and_found_again_by_pid(v2_tree) -> None:  # type: ignore[no-untyped-def]
    root, agent, _ = v2_tree
    found = _detect(root)
    group = found.create("iris-1", memory_mb=200, cpus=0.5)
    group.add(5151)
    # A re-adopted module: its group comes from /proc/<pid>/cgroup, limits read back.
    again = cgroups.find(5151, root=root, cgroup_text=f"0::{SERVICE}/module-iris-1\n")
    assert again is not None and (again.memory, again.memory_mb, again.cpus) == (group.memory, 200, 0.5)
    assert cgroups.find(5151, root=root, cgroup_text=f"0::{SERVICE}/agent\n") is None
    assert not group.remove()  # the module is still in it: the kernel refuses
    (agent / "module-iris-1" / "cgroup.procs").write_text("")  # it exited
    assert group.remove()
    assert not (agent / "module-iris-1").exists()


def test_v2_sweep_removes_empty_module_groups_only(v2_tree) -> None:  # type: ignore[no-untyped-def]
    root, agent, _ = v2_tree
    found = _detect(root)
    busy = found.create("busy-1", memory_mb=10, cpus=None)
    busy.add(5151)
    found.create("left-1", memory_mb=10, cpus=None)  # its instance is gone
    assert found.sweep() == 1
    assert (agent / "module-busy-1").exists() and not (agent / "module-left-1").exists()
    assert (agent / "agent").exists()


def test_no_memory_controller_anywhere_is_a_reason_not_a_crash(tmp_path: Path) -> None:
    with pytest.raises(cgroups.CgroupUnavailable):
        cgroups.detect("1:cpu:/\n", root=tmp_path, pid=AGENT_PID)
    with pytest.raises(cgroups.CgroupUnavailable, match="not visible"):
        (tmp_path / "memory").mkdir()
        (tmp_path / "memory" / "cgroup.procs").write_text("")
        cgroups.detect("4:memory:/elsewhere\n", root=tmp_path, pid=AGENT_PID)


async def _refused_without_a_kernel_group(tmp_path: Path) -> None:
    """Where this machine gives the agent no cgroup to make (no writable v1 memory hierarchy, no
    delegated v2 memory controller), what a module asking for one must get: `cgroup` mode refuses
    it with the reason, `auto` runs it under the rlimit enforcement."""
    strict = ProcessRuntime(tmp_path / "strict", module_limits="cgroup")
    with pytest.raises(ModuleStartError, match="by a cgroup"):
        await strict.start(make_config("iris-nocg-1"), resources=Resources(memory_mb=300))
    await strict.close()
    fallback = ProcessRuntime(tmp_path / "auto")
    assert fallback.describe_limits(Resources(memory_mb=300)).endswith(
        "(resident-memory watch, RLIMIT_DATA backstop)"
    )
    await fallback.close()


async def test_a_module_group_holds_the_limit_and_the_module_and_goes_with_it(tmp_path: Path) -> None:
    """On the kernel's own cgroups, whichever this machine lets the agent use (v1 here in CI)."""
    mechanism = _kernel_memory_here()
    if mechanism is None:
        return await _refused_without_a_kernel_group(tmp_path)
    version = 1 if mechanism.startswith("cgroup v1") else 2
    runtime = ProcessRuntime(tmp_path / "agent", module_limits="cgroup")
    try:
        instance = await runtime.start(make_config("iris-cg-1"), resources=Resources(memory_mb=300, cpus=1.5))
        group = instance.cgroup
        try:
            assert group is not None and group.version == version and group.memory is not None
            assert group.memory.name == "module-iris-cg-1"
            assert (group.memory / group.memory_file).read_text().strip() == str(300 << 20)
            assert str(instance.pid) in (group.memory / "cgroup.procs").read_text().split()
            if group.cpu is not None:
                quota = "150000" if version == 1 else "150000 100000"
                assert (group.cpu / group.cpu_file).read_text().strip() == quota
                assert str(instance.pid) in (group.cpu / "cgroup.procs").read_text().split()
            await runtime.wait_ready(instance, 60)
            # What a restarted agent finds for this pid when it adopts the instance.
            adopted = cgroups.find(instance.pid)
            assert adopted is not None and (adopted.memory, adopted.memory_mb) == (group.memory, 300)
        finally:
            await runtime.stop(instance)
        assert gone(instance.pid)
        assert all(not folder.exists() for folder in group.folders)
    finally:
        await runtime.close()


async def test_a_re_adopted_module_stays_in_its_group_and_its_oom_is_reported(tmp_path: Path) -> None:
    mechanism = _kernel_memory_here()
    if mechanism is None:
        return await _refused_without_a_kernel_group(tmp_path)
    script = write_script(tmp_path / "hog-code", "score.py", HOG_SCRIPT)
    config = make_config("hog-cg-1", script=script, module="hog")
    first = ProcessRuntime(tmp_path / "agent", module_limits="cgroup")
    instance = await first.start(config, resources=Resources(memory_mb=200))
    group = instance.cgroup
    assert group is not None and group.memory is not None
    # The earlier agent is gone (a kill -9): its handle must not clean up behind the new one.
    instance.cgroup = None
    successor = ProcessRuntime(tmp_path / "agent", module_limits="cgroup")
    states: list[ModuleState] = []
    try:
        await first.wait_ready(instance, 60)
        adopted = successor.adopt(config.instance_id, instance.pid, config)
        assert adopted is not None and adopted.cgroup is not None
        assert (adopted.cgroup.memory, adopted.cgroup.memory_mb) == (group.memory, 200)
        supervisor = Supervisor(
            successor,
            config,
            policy="never",
            backoff=Backoff(base_s=0.01),
            on_state=states.append,
            resources=Resources(memory_mb=200),
        )
        supervisor.adopt(adopted)
        assert supervisor.state.limits == f"memory 200 MiB ({mechanism})"
        async with aiohttp.ClientSession() as session:
            with contextlib.suppress(aiohttp.ClientError):
                url = f"http://127.0.0.1:{config.port}/score"
                async with session.post(url, json={"allocate_mb": 400}) as response:
                    await response.read()
        await _until(states, lambda s: s.status == "failed", timeout=30)
        assert supervisor.state.last_error == (
            f"out of memory: killed by the kernel at memory_mb 200 ({mechanism})"
        )
        await supervisor.stop()
        await asyncio.wait_for(instance.wait(), 10)
        assert not group.memory.exists()
    finally:
        await first.stop(instance, timeout=1.0)
        group.remove()
        await successor.close()
        await first.close()


async def test_cgroup_mode_fails_the_module_where_no_group_can_be_made(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def unavailable() -> cgroups.Controllers:
        raise cgroups.CgroupUnavailable("no memory controller in the agent's cgroups")

    monkeypatch.setattr(cgroups, "for_this_process", unavailable)
    strict = ProcessRuntime(tmp_path / "strict", module_limits="cgroup")
    with pytest.raises(ModuleStartError, match="cannot limit iris-cg-2 by a cgroup"):
        await strict.start(make_config("iris-cg-2"), resources=Resources(memory_mb=300))
    await strict.close()
    fallback = ProcessRuntime(tmp_path / "auto")
    assert fallback.describe_limits(Resources(memory_mb=300)) == (
        "memory 300 MiB (resident-memory watch, RLIMIT_DATA backstop)"
    )
    instance = await fallback.start(make_config("iris-cg-3"), resources=Resources(memory_mb=300))
    try:
        assert instance.cgroup is None
    finally:
        await fallback.stop(instance)
        await fallback.close()


def test_module_limits_setting_from_file_or_environment(tmp_path: Path) -> None:
    (tmp_path / "agent.toml").write_text('device_id = "press-1"\nmodule_limits = "cgroup"\n')
    assert load_agent_config(tmp_path / "agent.toml", {}, environ={}).module_limits == "cgroup"
    env = {"MODELFLEET_MODULE_LIMITS": "rlimit"}
    assert load_agent_config(tmp_path / "agent.toml", {}, environ=env).module_limits == "rlimit"
    assert load_agent_config(None, {"device_id": "press-1"}, environ={}).module_limits == "auto"
    with pytest.raises(ConfigError, match="module_limits"):
        load_agent_config(None, {"device_id": "press-1", "module_limits": "kernel"}, environ={})
    with pytest.raises(ValueError, match="module_limits"):
        ProcessRuntime(tmp_path, module_limits="kernel")  # type: ignore[arg-type]
