"""Operating the agent: settings precedence, `agent status`, and one-line errors."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from edge_agent._agent import Agent
from edge_agent._config import load_agent_config
from edge_agent.cli import main
from modules import ConfigError
from tests._services import Service, free_port
from tests.edge_agent._fleet import agent_config

ROOT = Path(__file__).resolve().parents[2]


def test_flags_beat_environment_beat_file(tmp_path: Path) -> None:
    config = tmp_path / "agent.toml"
    config.write_text(
        '[agent]\ndevice_id = "from-file"\nfleet = "plant"\nhub = "mqtt://10.0.0.1:1883"\n'
        'tags = { site = "a", line = 3 }\n'
    )
    c = load_agent_config(config, {}, environ={})
    assert (c.device_id, c.fleet, c.tags) == ("from-file", "plant", {"site": "a", "line": 3})
    c = load_agent_config(
        config, {}, environ={"MODELFLEET_DEVICE_ID": "from-env", "MODELFLEET_HUB": "mqtt://h:1"}
    )
    assert (c.device_id, c.hub) == ("from-env", "mqtt://h:1")
    c = load_agent_config(
        config,
        {"device_id": "from-flag", "tags": {"gpu": True}, "port_base": 100},
        environ={"MODELFLEET_DEVICE_ID": "e"},
    )
    assert (c.device_id, c.tags, c.module_port(5001)) == (
        "from-flag",
        {"site": "a", "line": 3, "gpu": True},
        5101,
    )


@pytest.mark.parametrize(
    ("content", "overrides", "message"),
    [
        ("", {}, "no device id"),
        ('device_id = "bad id with spaces"', {}, "device_id"),
        ('device_id = "ok"\nport_base = -1', {}, "port_base"),
        ('device_id = "ok"\nunknown = 1', {}, "unknown"),
        ("device_id = ", {}, "not valid TOML"),
    ],
)
def test_bad_settings_are_one_clear_error(
    tmp_path: Path, content: str, overrides: dict, message: str
) -> None:
    (tmp_path / "agent.toml").write_text(content)
    with pytest.raises(ConfigError, match=message):
        load_agent_config(tmp_path / "agent.toml", overrides, environ={})


def test_agent_run_with_unreadable_trust_file_is_a_one_line_error(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELFLEET_")}
    proc = subprocess.run(
        [sys.executable, "-m", "modules.cli", "agent", "run", "--device-id", "d1",
         "--trust", str(tmp_path / "none.pem"), "--data-dir", str(tmp_path / "data"), "--status-port", "0"],
        capture_output=True, text=True, env=env, cwd=ROOT, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("modelfleet: error: cannot read trusted key")
    assert "Traceback" not in proc.stderr


async def test_agent_status_reads_the_local_endpoint(
    tmp_path: Path, mosquitto: Service, distribution: Service, capsys: pytest.CaptureFixture[str]
) -> None:
    trust = tmp_path / "pub.pem"
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from modules.signing import public_key_pem

    trust.write_text(public_key_pem(Ed25519PrivateKey.generate()))
    port = free_port()
    config = agent_config(tmp_path / "a", "dev-s", mosquitto.url, distribution.url, trust, "statusfleet")
    agent = Agent(config.model_copy(update={"status_port": port}))
    await agent.start()
    try:
        code = await asyncio.to_thread(main, ["agent", "status", "--port", str(port), "--json"])
        state = json.loads(capsys.readouterr().out)
        assert code == 0 and state["device_id"] == "dev-s" and state["fleet"] == "statusfleet"
        assert await asyncio.to_thread(main, ["agent", "status", "--port", str(port)]) == 0
        assert "device dev-s (fleet statusfleet)" in capsys.readouterr().out
    finally:
        await agent.stop()
    assert await asyncio.to_thread(main, ["agent", "status", "--port", str(port)]) == 1
    assert "no agent answers" in capsys.readouterr().err


async def test_agent_stop_finishes_even_if_a_task_ignores_its_cancellation(
    tmp_path: Path, mosquitto: Service, distribution: Service, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from edge_agent import _agent
    from modules.signing import public_key_pem

    trust = tmp_path / "pub.pem"
    trust.write_text(public_key_pem(Ed25519PrivateKey.generate()))
    config = agent_config(tmp_path / "a", "dev-x", mosquitto.url, distribution.url, trust, "stopfleet")
    agent = Agent(config)
    await agent.start()
    release = asyncio.Event()

    async def stubborn() -> None:
        while not release.is_set():
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.sleep(3600)

    rude = asyncio.create_task(stubborn(), name="stubborn")
    agent._tasks.append(rude)
    monkeypatch.setattr(_agent, "_STOP_GRACE_S", 0.3)

    await asyncio.wait_for(agent.stop(), 30)

    assert not rude.done()  # left behind, logged, and the agent still stopped
    release.set()
    rude.cancel()
    await asyncio.wait_for(rude, 10)


def test_agent_key_prints_the_same_key_and_its_fingerprint_every_time(tmp_path: Path, capsys) -> None:
    from modules.service_keys import key_fingerprint

    assert main(["agent", "key", "--data-dir", str(tmp_path), "--json"]) == 0
    first = json.loads(capsys.readouterr().out)
    assert main(["agent", "key", "--data-dir", str(tmp_path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == first
    assert first["fingerprint"] == key_fingerprint(first["public_key"]) and len(first["fingerprint"]) == 32
    assert oct((tmp_path / "device-x25519.pem").stat().st_mode & 0o777) == "0o600"


def test_relative_paths_in_the_settings_become_absolute(tmp_path: Path, monkeypatch) -> None:
    from edge_agent._config import load_agent_config

    monkeypatch.chdir(tmp_path)
    config = load_agent_config(None, {"device_id": "press-1", "data_dir": "press-1", "trust": ["keys/p.pem"]})
    assert config.data_dir == tmp_path.resolve() / "press-1"
    assert config.trust == [tmp_path.resolve() / "keys" / "p.pem"]
