"""The default module runtime is built when a module first needs it.

What must hold: an agent with nothing to run answers its start and reconcile passes without the
executor, the artifact store, the process runtime or the deployment contract's models; anything
an earlier agent left on the device (a stray scoring host, a container folder, stored blobs)
builds the real runtime at once, which then does what it always did with it; and a deployment
builds it and runs through it with the callbacks the agent bound first.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from edge_agent import _runtime_on_first_use as first_use
from edge_agent._runtime_on_first_use import RuntimeOnFirstUse

ROOT = Path(__file__).resolve().parents[2]


class _Recorder:
    """A runtime that only records what reached it."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.store = "the store"

    def bind(self, on_state: Any, keys_for: Any, on_progress: Any = None) -> None:
        self.calls.append(("bind", (on_state, keys_for, on_progress)))

    async def start(self, command: Any) -> str:
        self.calls.append(("start", command))
        return "record"

    async def reap_strays(self) -> list[int]:
        self.calls.append(("reap_strays", None))
        return [4242]

    async def prune(self, keep: set[str]) -> None:
        self.calls.append(("prune", keep))

    def serving(self) -> dict[str, Any]:
        return {"iris": "record"}

    async def execution_providers(self) -> list[str]:
        return ["FromTheRealRuntime"]

    async def shutdown(self) -> None:
        self.calls.append(("shutdown", None))


def _lazy(data_dir: Path) -> tuple[RuntimeOnFirstUse, list[_Recorder]]:
    built: list[_Recorder] = []

    def build() -> _Recorder:
        built.append(_Recorder())
        return built[-1]

    return RuntimeOnFirstUse(build, data_dir), built  # type: ignore[arg-type]


def test_what_an_agent_with_nothing_to_run_asks_is_answered_without_building(tmp_path, monkeypatch) -> None:
    async def providers() -> list[str]:
        return ["CPUExecutionProvider"]

    monkeypatch.setattr(first_use, "execution_providers", providers)
    monkeypatch.setattr(first_use, "find_strays", lambda runtime_dir, keep: [])
    runtime, built = _lazy(tmp_path)
    runtime.bind(print, print)
    (tmp_path / "store" / "blobs" / "sha256").mkdir(parents=True)  # folders, no file

    async def scenario() -> None:
        assert runtime.serving() == {}
        assert await runtime.execution_providers() == ["CPUExecutionProvider"]
        assert await runtime.reap_strays() == []
        await runtime.prune(set())
        await runtime.shutdown()

    asyncio.run(scenario())
    assert built == [] and not runtime.built


@pytest.mark.parametrize("left", ["stray", "container folder", "stored blob"])
def test_what_an_earlier_agent_left_builds_the_runtime_which_then_handles_it(
    tmp_path, monkeypatch, left
) -> None:
    strays = [31337] if left == "stray" else []
    monkeypatch.setattr(first_use, "find_strays", lambda runtime_dir, keep: strays)
    if left == "container folder":
        (tmp_path / "runtime" / "containers").mkdir(parents=True)
    if left == "stored blob":
        blob = tmp_path / "store" / "blobs" / "sha256" / ("ab" * 32)
        blob.parent.mkdir(parents=True)
        blob.write_bytes(b"left over")
    runtime, built = _lazy(tmp_path)

    async def scenario() -> None:
        if left == "stored blob":
            await runtime.prune({"sha256:keep"})
        else:
            assert await runtime.reap_strays() == [4242]

    asyncio.run(scenario())
    assert len(built) == 1
    assert built[0].calls[-1][0] == ("prune" if left == "stored blob" else "reap_strays")


def test_a_module_builds_the_runtime_once_with_the_callbacks_bound_before(tmp_path) -> None:
    runtime, built = _lazy(tmp_path)
    on_state, keys_for, on_progress = object(), object(), object()
    runtime.bind(on_state, keys_for, on_progress)  # type: ignore[arg-type]

    async def scenario() -> None:
        assert await runtime.start("start iris") == "record"  # type: ignore[arg-type]
        assert await runtime.start("start other") == "record"  # type: ignore[arg-type]
        assert runtime.serving() == {"iris": "record"}
        assert await runtime.execution_providers() == ["FromTheRealRuntime"]
        await runtime.shutdown()

    asyncio.run(scenario())
    assert len(built) == 1
    calls = [name for name, _ in built[0].calls]
    assert calls == ["bind", "start", "start", "shutdown"]
    assert built[0].calls[0][1] == (on_state, keys_for, on_progress)
    assert runtime.store == "the store"  # what callers reach on the executor itself


def test_an_agent_that_received_nothing_has_not_loaded_the_runtime_or_the_contract(tmp_path) -> None:
    """A real agent (its default runtime; a broker that is not there), in a process of its own:
    after its first reconcile pass the heavy parts are still not imported."""
    script = textwrap.dedent(
        f"""
        import asyncio, json, socket, sys
        from pathlib import Path
        from edge_agent._agent import Agent
        from edge_agent._config import AgentConfig

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]  # nothing listens there
        config = AgentConfig(
            device_id="dev-1", fleet="f", hub=f"mqtt://127.0.0.1:{{port}}", data_dir=Path({str(tmp_path)!r}),
            status_port=0, heartbeat_s=3600,
        )

        async def main():
            agent = Agent(config)
            await agent.start()
            await asyncio.wait_for(agent.reconciled.wait(), 30)
            heavy = [
                "edge_agent._executor", "edge_agent._store", "edge_agent._runtime", "modules.oci",
                "modules.deployment._manifest", "modules.deployment._envelope",
                "modules.deployment._selection",
            ]
            loaded = [m for m in heavy if m in sys.modules]
            print(json.dumps({{"loaded": loaded, "built": agent.runtime.built}}))
            await agent.stop()

        asyncio.run(main())
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1]) == {"loaded": [], "built": False}


def test_agent_run_hands_over_to_the_daemon_in_the_same_process(tmp_path) -> None:
    """`agent run` checks its settings, then execs the daemon: same pid, the daemon's command
    line, and the settings it was given (an unknown option or a bad setting never gets there)."""
    import os
    import signal
    import socket
    import time
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        status_port = s.getsockname()[1]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        broker_port = s.getsockname()[1]  # nothing listens: the agent serves its status meanwhile
    agent = subprocess.Popen(
        [sys.executable, "-m", "modules.cli", "agent", "run", "--device-id", "dev-x", "--fleet", "f",
         "--hub", f"mqtt://127.0.0.1:{broker_port}", "--data-dir", str(tmp_path / "agent"),
         "--status-port", str(status_port), "--log-level", "WARNING"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        state = None
        while state is None and time.monotonic() < deadline:
            assert agent.poll() is None, agent.communicate()
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{status_port}/status", timeout=2) as reply:
                    state = json.loads(reply.read())
            except OSError:
                time.sleep(0.1)
        assert state is not None and state["device_id"] == "dev-x"
        cmdline = Path(f"/proc/{agent.pid}/cmdline").read_bytes().split(b"\0")
        assert any(b"from edge_agent._daemon import main" in arg for arg in cmdline), cmdline
        assert b"-P" in cmdline and b"modules.cli" not in cmdline
    finally:
        agent.send_signal(signal.SIGTERM)
        _, err = agent.communicate(timeout=60)
    assert agent.returncode == 0, err
    assert not os.path.exists(f"/proc/{agent.pid}")

    bad = subprocess.run(
        [sys.executable, "-m", "modules.cli", "agent", "run", "--fleet", "f",
         "--data-dir", str(tmp_path / "b")],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert bad.returncode == 2
    assert bad.stderr.startswith("modelfleet: error: no device id")
