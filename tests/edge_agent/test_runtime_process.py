"""The process runtime with real children running the real scoring host on the example models."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import textwrap
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
import pytest
from pydantic import SecretStr

from edge_agent._runtime import FrontProxy, InstanceConfig, ModuleStartError, ProcessRuntime, RotatingLog
from modules.spec import ModelRef, ModuleSpec

ROOT = Path(__file__).resolve().parents[2]
IRIS_DIR = ROOT / "examples" / "models" / "iris"
IRIS_SCRIPT = ROOT / "examples" / "iris-service" / "score.py"
IRIS_SAMPLE = json.loads((IRIS_DIR / "sample-input.json").read_text())
# Not installed in the system Python (checked below), a small pure-Python wheel on the index.
TINY_REQUIREMENT = "termcolor"


_PORTS_GIVEN: set[int] = set()


def free_port() -> int:
    """A port nothing listens on, and never one handed out before in this test run: the kernel may
    give a just-released port again, and of two instances given one port the second cannot bind
    it while its readiness checks are answered by the first."""
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        if port not in _PORTS_GIVEN:
            _PORTS_GIVEN.add(port)
            return port


def make_config(
    instance_id: str,
    *,
    script: Path | None = IRIS_SCRIPT,
    module: str = "iris-svc",
    sample: object = None,
    env: dict[str, str] | None = None,
) -> InstanceConfig:
    spec = ModuleSpec(
        name=module,
        version=1,
        entry_script=script.name if script else None,
        models=[ModelRef(name="iris", version=1, digest="sha256:" + "0" * 64, files=[])],
        sample_input=sample,
        created=datetime.now(UTC),
    )
    return InstanceConfig(
        instance_id=instance_id,
        module=module,
        model_dir=IRIS_DIR,
        entry_script=Path(script.name) if script else None,
        code_dir=script.parent if script else None,
        spec=spec,
        port=free_port(),
        env=env or {},
    )


def write_script(folder: Path, name: str, body: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(textwrap.dedent(body))
    return path


def gone(pid: int) -> bool:
    """No such process, or only a zombie left for init to reap."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] in ("Z", "X")


@pytest.fixture
async def runtime(tmp_path: Path):
    runtime = ProcessRuntime(tmp_path / "agent")
    yield runtime
    await runtime.close()


async def test_instance_serves_iris_predictions_through_the_front_proxy(runtime: ProcessRuntime) -> None:
    config = make_config("iris-svc-aaaa-1", sample=IRIS_SAMPLE)
    config = config.model_copy(update={"primary_key": SecretStr("k3y-only-in-settings")})
    instance = await runtime.start(config)
    proxy = FrontProxy("127.0.0.1", 0)
    await proxy.start()
    try:
        await runtime.wait_ready(instance, timeout=60)
        await runtime.smoke_test(instance)
        assert proxy.switch(config.port) is None
        async with aiohttp.ClientSession() as session:
            url = f"http://127.0.0.1:{proxy.port}/score"
            async with session.post(url, json=IRIS_SAMPLE) as response:
                assert response.status == 401  # the proxy adds no credentials of its own
            bearer = {"Authorization": "Bearer k3y-only-in-settings"}
            async with session.post(url, json=IRIS_SAMPLE, headers=bearer) as response:
                assert response.status == 200
                body = await response.json()
        assert body["predictions"] == ["setosa", "versicolor", "virginica"]
        settings = runtime.settings_path(config.instance_id)
        assert config.instance_id in Path(f"/proc/{instance.pid}/cmdline").read_text()
        assert settings.stat().st_mode & 0o077 == 0
        assert b"k3y-only-in-settings" not in settings.read_bytes()  # handed over by pipe only
    finally:
        await proxy.stop()
        code = await runtime.stop(instance)
    assert code == 0  # SIGTERM is a clean stop for the host
    lines = runtime.logs("iris-svc")
    assert any("ready" in line for line in lines)
    assert not any("k3y-only-in-settings" in line for line in lines)


async def test_failing_init_is_reported_quickly_with_its_message(
    runtime: ProcessRuntime, tmp_path: Path
) -> None:
    script = write_script(
        tmp_path / "code",
        "score.py",
        """
        def init():
            raise RuntimeError("weights are missing: expected iris.onnx")

        def run(raw_data):
            return {}
        """,
    )
    instance = await runtime.start(make_config("broken-1", script=script, module="broken"))
    try:
        with pytest.raises(ModuleStartError, match="weights are missing"):
            # Far longer than the host needs: failing fast means not waiting for this.
            await runtime.wait_ready(instance, timeout=120)
        assert instance.returncode is None  # the host stays up and reports the error
    finally:
        await runtime.stop(instance)


async def test_exit_before_ready_quotes_the_last_output(runtime: ProcessRuntime, tmp_path: Path) -> None:
    script = write_script(
        tmp_path / "code",
        "score.py",
        """
        import os, sys
        print("cannot find the GPU driver", file=sys.stderr, flush=True)
        os._exit(7)
        """,
    )
    instance = await runtime.start(make_config("dies-1", script=script, module="dies"))
    with pytest.raises(ModuleStartError, match="code 7") as caught:
        await runtime.wait_ready(instance, timeout=120)
    assert "cannot find the GPU driver" in caught.value.reason
    assert await instance.wait() == 7


async def test_stop_kills_the_whole_process_group(runtime: ProcessRuntime, tmp_path: Path) -> None:
    pid_file = tmp_path / "helper.pid"
    script = write_script(
        tmp_path / "code",
        "score.py",
        """
        import os, signal, subprocess

        def init():
            # A helper that ignores SIGTERM: only the group-wide SIGKILL ends it.
            helper = subprocess.Popen(
                ["python3", "-c", "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                 "time.sleep(600)"]
            )
            with open(os.environ["HELPER_PID_FILE"], "w") as f:
                f.write(str(helper.pid))

        def run(raw_data):
            return {}
        """,
    )
    config = make_config("grouped-1", script=script, module="grouped", env={"HELPER_PID_FILE": str(pid_file)})
    instance = await runtime.start(config)
    await runtime.wait_ready(instance, timeout=60)
    helper = int(pid_file.read_text())
    assert not gone(helper)
    await runtime.stop(instance, timeout=1.0)
    assert gone(instance.pid)
    assert gone(helper)


async def test_adopt_recognises_its_instance_and_refuses_other_pids(runtime: ProcessRuntime) -> None:
    config = make_config("iris-svc-bbbb-1")
    instance = await runtime.start(config)
    stranger = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        await runtime.wait_ready(instance, timeout=60)
        # A new agent after a restart: same data dir, no memory of the child.
        successor = ProcessRuntime(runtime.data_dir)
        adopted = successor.adopt(config.instance_id, instance.pid, config)
        assert adopted is not None and adopted.pid == instance.pid and adopted.returncode is None
        assert successor.adopt(config.instance_id, stranger.pid, config) is None
        other = config.model_copy(update={"instance_id": "iris-svc-bbbb-2"})
        assert successor.adopt(other.instance_id, instance.pid, other) is None
        await successor.stop(adopted)
        assert await asyncio.wait_for(adopted.wait(), 30) is not None
        assert gone(instance.pid)
        assert successor.adopt(config.instance_id, instance.pid, config) is None
    finally:
        stranger.kill()
        stranger.wait()
        await runtime.stop(instance)


def test_rotating_log_keeps_at_most_the_configured_files_and_logs_tails_them(tmp_path: Path) -> None:
    runtime = ProcessRuntime(tmp_path, log_max_bytes=1000, log_backups=2)
    module_log = runtime.module_log("noisy")
    for index in range(500):
        module_log.write(f"line {index:04d}\n".encode())
    module_log.close()
    files = sorted(p.name for p in (tmp_path / "logs").iterdir())
    assert files == ["noisy.log", "noisy.log.1", "noisy.log.2"]
    assert all(p.stat().st_size <= 1000 for p in (tmp_path / "logs").iterdir())
    assert runtime.logs("noisy", tail=3) == ["line 0497", "line 0498", "line 0499"]
    # More than the current file holds: the tail continues into the rotated files, in order.
    tail = runtime.logs("noisy", tail=150)
    assert tail == [f"line {i:04d}" for i in range(350, 500)]
    assert runtime.logs("silent") == []


def test_rotating_log_without_backups_only_keeps_the_current_file(tmp_path: Path) -> None:
    module_log = RotatingLog(tmp_path / "m.log", max_bytes=100, backups=0)
    for _ in range(50):
        module_log.write(b"0123456789\n")
    module_log.close()
    assert [p.name for p in tmp_path.iterdir()] == ["m.log"]


async def test_ensure_env_without_requirements_is_the_system_python(runtime: ProcessRuntime) -> None:
    assert await runtime.ensure_env([]) == sys.executable
    assert await runtime.ensure_env(["  "]) == sys.executable


def _base_python_imports_onnxruntime() -> bool:
    base = getattr(sys, "_base_executable", sys.executable)
    return subprocess.run([base, "-c", "import onnxruntime"], capture_output=True).returncode == 0


async def test_ensure_env_builds_a_venv_once_and_reuses_it(runtime: ProcessRuntime) -> None:
    """The agent runs from a venv (this suite's); the module's venv must see what was installed
    beside the agent, not only what the system Python has."""
    if os.environ.get("CI") == "true":
        # CI proves the fresh-machine case: onnxruntime exists only in the agent's own environment.
        assert sys.prefix != sys.base_prefix, "CI runs the suite from the project's venv"
        assert not _base_python_imports_onnxruntime(), "the system Python must not carry onnxruntime in CI"
    shown = subprocess.run([sys.executable, "-m", "pip", "show", TINY_REQUIREMENT], capture_output=True)
    assert shown.returncode != 0, f"{TINY_REQUIREMENT} must not be in the system Python for this test"
    first, second = await asyncio.gather(
        runtime.ensure_env([TINY_REQUIREMENT]), runtime.ensure_env([TINY_REQUIREMENT])
    )
    assert first == second != sys.executable
    envs = runtime.data_dir / "envs"
    assert [p.name for p in envs.iterdir()] == [Path(first).parents[1].name]  # no leftovers
    marker = Path(first).parents[1] / "reused"
    marker.write_text("")
    assert await runtime.ensure_env([f" {TINY_REQUIREMENT}"]) == first
    assert marker.exists()
    check = subprocess.run(
        [first, "-c", "import termcolor, modules.scoring, onnxruntime; print('ok')"],
        capture_output=True,
        text=True,
    )
    assert check.stdout.strip() == "ok", check.stderr


async def test_ensure_env_reports_pip_failure(runtime: ProcessRuntime) -> None:
    with pytest.raises(ModuleStartError, match="pip install failed") as caught:
        await runtime.ensure_env(["modelfleet-no-such-package-exists==0.0.1"])
    assert "modelfleet-no-such-package-exists" in caught.value.reason
    assert not any((runtime.data_dir / "envs").iterdir())


async def test_a_stray_instance_no_record_accounts_for_is_found_and_reaped(runtime: ProcessRuntime) -> None:
    """What a crash between starting an instance and recording it leaves behind."""
    kept = await runtime.start(make_config("iris-svc-keep-1"))
    stray = await runtime.start(make_config("iris-svc-stray-2"))
    try:
        await runtime.wait_ready(stray, timeout=60)
        assert runtime.strays({kept.pid}) == [stray.pid]
        other = ProcessRuntime(runtime.data_dir.parent / "another-agent")
        assert other.strays(set()) == []  # another data dir's instances are not ours
        await runtime.reap(stray.pid)
        assert runtime.strays({kept.pid}) == []
        assert kept.pid in {p for p in [kept.pid] if Path(f"/proc/{p}").exists()}
    finally:
        await runtime.stop(kept)
        await runtime.stop(stray)
