"""Supervision: restart policies and backoff, with real children that crash on their own."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable
from pathlib import Path

import aiohttp
import pytest

from edge_agent._runtime import Backoff, ModuleStartError, ProcessRuntime, Supervisor, should_restart
from modules.device_state import ModuleState
from modules.spec import HealthProbe, Resources
from tests.edge_agent.test_runtime_process import gone, make_config, write_script

CRASHING_SCRIPT = """
import os, threading, time

def init():
    # Serve for a moment, then die with exit code 3 as a segfaulting native library would.
    def crash():
        time.sleep(float(os.environ.get("CRASH_AFTER_S", "1.0")))
        os._exit(3)
    threading.Thread(target=crash, daemon=True).start()

def run(raw_data):
    return {"ok": True}
"""


def test_backoff_doubles_up_to_its_maximum() -> None:
    backoff = Backoff()
    assert [backoff.delay(n) for n in range(1, 11)] == [1, 2, 4, 8, 16, 32, 64, 128, 256, 300]
    assert backoff.delay(10_000) == 300
    assert Backoff(base_s=0.1, max_s=0.3).delay(3) == 0.3


@pytest.mark.parametrize(
    ("policy", "code", "unhealthy", "expected"),
    [
        ("never", 1, False, False),
        ("on-failure", 0, False, False),
        ("on-failure", 3, False, True),
        ("on-failure", 0, True, False),
        ("on-unhealthy", 0, True, True),
        ("on-unhealthy", 3, False, True),
        ("always", 0, False, True),
    ],
)
def test_restart_policies(policy, code: int, unhealthy: bool, expected: bool) -> None:  # type: ignore[no-untyped-def]
    assert should_restart(policy, code, unhealthy=unhealthy) is expected


async def _until(states: list[ModuleState], predicate: Callable[[ModuleState], bool], timeout: float) -> None:
    """Bounded wait for a reported state; the test fails with the history if it never comes."""

    async def poll() -> None:
        while not any(predicate(s) for s in states):
            await asyncio.sleep(0.05)

    try:
        await asyncio.wait_for(poll(), timeout)
    except TimeoutError:
        pytest.fail(f"state never reached; history: {[(s.status, s.restart_count) for s in states]}")


@pytest.fixture
async def runtime(tmp_path: Path):
    runtime = ProcessRuntime(tmp_path / "agent")
    yield runtime
    await runtime.close()


async def test_on_failure_restarts_with_growing_delays(runtime: ProcessRuntime, tmp_path: Path) -> None:
    script = write_script(tmp_path / "code", "score.py", CRASHING_SCRIPT)
    config = make_config("crashy-1", script=script, module="crashy", env={"CRASH_AFTER_S": "1.0"})
    states: list[ModuleState] = []
    supervisor = Supervisor(
        runtime,
        config,
        policy="on-failure",
        backoff=Backoff(base_s=0.2, max_s=5.0, reset_after_s=600),
        on_state=states.append,
        health_probe=HealthProbe(period_s=0.2, timeout_s=1.0),
    )
    await supervisor.start()
    first_pid = supervisor.state.pid
    try:
        await _until(states, lambda s: s.restart_count >= 3 and s.status == "running", timeout=60)
    finally:
        await supervisor.stop()
    backoffs = [s for s in states if s.status == "backoff"]
    assert len(backoffs) >= 3
    assert all(s.next_restart_at is not None and s.exit_code == 3 for s in backoffs)
    delays = [(s.next_restart_at - s.exited_at).total_seconds() for s in backoffs]  # type: ignore[operator]
    assert delays[:3] == pytest.approx([0.2, 0.4, 0.8])
    restarts = [s.restart_count for s in states]
    assert restarts == sorted(restarts) and restarts[-1] >= 3
    assert supervisor.state.status == "stopped" and supervisor.state.pid is None
    assert first_pid is not None and gone(first_pid)


async def test_policy_never_leaves_a_crashed_module_failed(runtime: ProcessRuntime, tmp_path: Path) -> None:
    script = write_script(tmp_path / "code", "score.py", CRASHING_SCRIPT)
    config = make_config("crashy-2", script=script, module="crashy", env={"CRASH_AFTER_S": "0.5"})
    states: list[ModuleState] = []
    supervisor = Supervisor(
        runtime, config, policy="never", backoff=Backoff(base_s=0.01), on_state=states.append
    )
    await supervisor.start()
    try:
        await _until(states, lambda s: s.status == "failed", timeout=30)
        state = supervisor.state
        assert (state.status, state.exit_code, state.restart_count, state.pid) == ("failed", 3, 0, None)
        assert state.exited_at is not None
        assert "backoff" not in [s.status for s in states]
    finally:
        await supervisor.stop()


async def test_failed_first_start_raises_and_reports_failed(runtime: ProcessRuntime, tmp_path: Path) -> None:
    script = write_script(
        tmp_path / "code",
        "score.py",
        "def init():\n    raise ValueError('bad config')\n\ndef run(d):\n    return d\n",
    )
    states: list[ModuleState] = []
    supervisor = Supervisor(
        runtime,
        make_config("bad-1", script=script, module="bad"),
        policy="always",
        backoff=Backoff(base_s=0.01),
        on_state=states.append,
    )
    with pytest.raises(ModuleStartError, match="bad config"):
        await supervisor.start()
    assert supervisor.state.status == "failed"
    assert "bad config" in (supervisor.state.last_error or "")
    assert states[0].status == "starting"


@pytest.mark.parametrize("policy", ["on-unhealthy", "always"])
async def test_on_unhealthy_and_always_replace_an_instance_that_fails_its_probe(
    runtime: ProcessRuntime, tmp_path: Path, policy: str
) -> None:
    states: list[ModuleState] = []
    supervisor = Supervisor(
        runtime,
        make_config(f"iris-svc-probe-{policy}"),
        policy=policy,  # type: ignore[arg-type]
        backoff=Backoff(base_s=0.05),
        on_state=states.append,
        # A route the host does not have: every probe fails, as a wedged model's would.
        health_probe=HealthProbe(path="/no-such-route", period_s=0.1, timeout_s=1.0, failure_threshold=2),
    )
    await supervisor.start()
    first_pid = supervisor.state.pid
    try:
        await _until(states, lambda s: s.restart_count >= 1 and s.status == "running", timeout=60)
    finally:
        await supervisor.stop()
    statuses = [s.status for s in states]
    assert statuses.index("unhealthy") < statuses.index("backoff")
    assert any(s.health == "unhealthy" for s in states)
    assert "health probe" in (supervisor.state.last_error or "")
    assert first_pid is not None and gone(first_pid)


HOG_SCRIPT = """
import json

hoard = []


def init():
    pass


def run(raw):
    megabytes = json.loads(raw).get("allocate_mb", 0)
    hoard.append(bytearray(megabytes * 1024 * 1024))  # touched: zero-filled pages are resident
    return {"held_mb": sum(len(b) for b in hoard) // (1024 * 1024)}
"""


def _kernel_memory_here() -> str | None:
    """The cgroup file that should hold a module's memory on this machine, found independently of
    the runtime: the agent's v1 memory cgroup when writable, else v2's memory controller when the
    agent's cgroup has it and holds nothing but this process; None for the rlimit enforcement."""
    lines = [line.split(":", 2) for line in Path("/proc/self/cgroup").read_text().splitlines()]
    for _, controllers, path in lines:
        if "memory" in controllers.split(","):
            folder = Path("/sys/fs/cgroup/memory") / path.lstrip("/")
            return "cgroup v1 memory.limit_in_bytes" if os.access(folder, os.W_OK) else None
    unified = next((path for hierarchy, _, path in lines if hierarchy == "0"), None)
    if unified is None:
        return None
    root = Path("/sys/fs/cgroup")
    folder = (root if (root / "cgroup.controllers").exists() else root / "unified") / unified.lstrip("/")
    if folder.name == "agent" and "memory" in (folder.parent / "cgroup.subtree_control").read_text().split():
        return "cgroup v2 memory.max"  # delegated already, by an earlier test in this process
    if "memory" not in (folder / "cgroup.controllers").read_text().split():
        return None
    alone = (folder / "cgroup.procs").read_text().split() == [str(os.getpid())]
    return "cgroup v2 memory.max" if alone and os.access(folder, os.W_OK) else None


@pytest.mark.parametrize("mode", ["rlimit", "auto"])
async def test_a_module_over_its_memory_is_killed_and_reported_while_its_neighbour_serves(
    mode: str, tmp_path: Path
) -> None:
    runtime = ProcessRuntime(tmp_path / "agent", module_limits=mode)  # type: ignore[arg-type]
    expected = _kernel_memory_here() if mode == "auto" else None
    script = write_script(tmp_path / "hog-code", "score.py", HOG_SCRIPT)
    hog_states: list[ModuleState] = []
    hog = Supervisor(
        runtime,
        make_config("hog-1", script=script, module="hog"),
        policy="never",
        backoff=Backoff(base_s=0.01),
        on_state=hog_states.append,
        resources=Resources(memory_mb=200),
    )
    neighbour = Supervisor(
        runtime,
        make_config("calm-1", script=script, module="calm"),
        policy="always",
        backoff=Backoff(base_s=0.01),
        on_state=lambda s: None,
    )
    await hog.start()
    await neighbour.start()
    try:
        reported = hog.state.limits or ""
        enforcer = expected or "resident-memory watch, RLIMIT_DATA backstop"
        assert reported == f"memory 200 MiB ({enforcer})"
        async with aiohttp.ClientSession() as session:
            url = f"http://127.0.0.1:{hog.config.port}/score"
            async with session.post(url, json={"allocate_mb": 50}) as response:
                assert response.status == 200  # within its limit
            with contextlib.suppress(aiohttp.ClientError):
                async with session.post(url, json={"allocate_mb": 400}) as response:
                    await response.read()
            await _until(hog_states, lambda s: s.status == "failed", timeout=30)
            error = hog.state.last_error or ""
            assert error.startswith("out of memory")
            if expected is not None:  # the kernel killed it, not the runtime's watch
                assert error == f"out of memory: killed by the kernel at memory_mb 200 ({expected})"
            async with session.post(
                f"http://127.0.0.1:{neighbour.config.port}/score", json={"allocate_mb": 1}
            ) as response:
                assert response.status == 200  # the neighbour never noticed
    finally:
        await hog.stop()
        await neighbour.stop()
        await runtime.close()
