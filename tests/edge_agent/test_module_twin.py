"""Module twins on the reconcile path, with the fakes: desired properties written to the module's
folder (never a restart), reported properties read back into the reported state."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path

import pytest

from edge_agent import Agent
from edge_agent._executor import twin_dir
from edge_agent._planner import Replace, Start
from modules.device_state import ReportedState
from modules.scoring import twin
from tests.deployment._factories import document, manifest, modelfleet_module
from tests.edge_agent._fakes import FakeRuntime, FakeTransport
from tests.edge_agent.test_reconcile import DIGEST_1, DIGEST_2, TOPICS, _config, _receive, _wire

pytestmark = pytest.mark.timeout(10)


def _twin_doc(version: int, desired: dict | None, digest: str = DIGEST_1, **fields):  # type: ignore[no-untyped-def]
    twins = {"iris": desired} if desired is not None else {}
    content = manifest({"iris": modelfleet_module("modules/iris", digest)}, **twins)
    return document(name="iris-prod", version=version, content=content, **fields)


def _folder(agent: Agent, name: str = "iris") -> Path:
    folder = twin_dir(agent.config.data_dir, name)
    assert folder is not None
    return folder


def _desired_file(agent: Agent, name: str = "iris") -> dict:
    return json.loads((_folder(agent, name) / twin.DESIRED_FILE).read_bytes())


class _SeesTwinAtStart(FakeRuntime):
    def __init__(self, agent_data: list[Path]) -> None:
        super().__init__()
        self.data = agent_data
        self.twin_at_start: dict | None = None

    async def start(self, command: Start):  # type: ignore[no-untyped-def]
        folder = twin_dir(self.data[0], command.desired.name)
        assert folder is not None
        self.twin_at_start = json.loads((folder / twin.DESIRED_FILE).read_bytes())
        return await super().start(command)


async def test_the_twin_is_written_before_the_module_starts(tmp_path: Path) -> None:
    config = _config(tmp_path)
    runtime = _SeesTwinAtStart([config.data_dir])
    agent = Agent(config, transport=FakeTransport(), runtime=runtime)
    await _receive(agent, TOPICS.deployment("iris-prod"), _wire(_twin_doc(1, {"threshold": 0.5})))
    assert runtime.twin_at_start == {"threshold": 0.5}
    assert _desired_file(agent) == {"threshold": 0.5}


async def test_a_twin_only_change_updates_the_file_and_restarts_nothing(tmp_path: Path) -> None:
    runtime = FakeRuntime()
    agent = Agent(_config(tmp_path), transport=FakeTransport(), runtime=runtime)
    await _receive(agent, TOPICS.deployment("iris-prod"), _wire(_twin_doc(1, {"threshold": 0.5})))
    await _receive(
        agent, TOPICS.deployment("iris-prod"), _wire(_twin_doc(2, {"threshold": 0.9, "labels": ["a"]}))
    )
    assert [type(c) for c in runtime.commands] == [Start]
    assert _desired_file(agent) == {"threshold": 0.9, "labels": ["a"]}
    assert agent.reported_state().deployments["iris-prod"].outcome == "applied"
    assert agent.reported_state().deployments["iris-prod"].version == 2
    # a new module version still replaces it, and the twin goes on
    await _receive(agent, TOPICS.deployment("iris-prod"), _wire(_twin_doc(3, {"threshold": 0.9}, DIGEST_2)))
    assert [type(c) for c in runtime.commands] == [Start, Replace]
    assert _desired_file(agent) == {"threshold": 0.9}


async def test_an_unchanged_twin_is_not_rewritten(tmp_path: Path) -> None:
    agent = Agent(_config(tmp_path), transport=FakeTransport(), runtime=FakeRuntime())
    await _receive(agent, TOPICS.deployment("iris-prod"), _wire(_twin_doc(1, {"threshold": 0.5})))
    before = (_folder(agent) / twin.DESIRED_FILE).stat().st_ino
    await agent.reconcile()
    await agent.reconcile()
    assert (_folder(agent) / twin.DESIRED_FILE).stat().st_ino == before


async def test_a_module_without_a_twin_section_gets_an_empty_one(tmp_path: Path) -> None:
    agent = Agent(_config(tmp_path), transport=FakeTransport(), runtime=FakeRuntime())
    await _receive(agent, TOPICS.deployment("iris-prod"), _wire(_twin_doc(1, None)))
    assert _desired_file(agent) == {}


async def test_a_layer_sets_part_of_the_twin(tmp_path: Path) -> None:
    agent = Agent(_config(tmp_path), transport=FakeTransport(), runtime=FakeRuntime())
    await _receive(
        agent, TOPICS.deployment("iris-prod"), _wire(_twin_doc(1, {"threshold": 0.5, "mode": "fast"}))
    )
    layer = document(
        name="tuning",
        version=1,
        layered=True,
        priority=5,
        content={"modulesContent": {"$edgeAgent": {}, "iris": {"properties.desired.threshold": 0.8}}},
    )
    await _receive(agent, TOPICS.deployment("tuning"), _wire(layer))
    assert _desired_file(agent) == {"threshold": 0.8, "mode": "fast"}
    assert agent.reported_state().deployments["tuning"].outcome == "applied"


async def test_reported_properties_flow_into_the_report(tmp_path: Path, monkeypatch, caplog) -> None:  # type: ignore[no-untyped-def]
    agent = Agent(_config(tmp_path), transport=FakeTransport(), runtime=FakeRuntime())
    await _receive(agent, TOPICS.deployment("iris-prod"), _wire(_twin_doc(1, {"threshold": 0.5})))
    assert agent.reported_state().modules["iris"].reported_properties is None
    monkeypatch.setenv(twin.TWIN_DIR_ENV, str(_folder(agent)))
    twin.report(seen=0.5, model="iris")
    await agent.reconcile()
    assert agent.reported_state().modules["iris"].reported_properties == {"seen": 0.5, "model": "iris"}
    # a patch: None removes a property
    twin.report(seen=None, ok=True)
    await agent.collect_reported_properties()
    assert agent.reported_state().modules["iris"].reported_properties == {"model": "iris", "ok": True}
    # a status change from the runtime keeps them
    state = agent.modules["iris"].model_copy(update={"reported_properties": None, "status": "backoff"})
    agent.runtime.on_state("iris", state)  # type: ignore[attr-defined]
    assert agent.reported_state().modules["iris"].reported_properties == {"model": "iris", "ok": True}
    # what is not a JSON object of at most 32 KiB is ignored, with a log line; the last good stands
    reported = _folder(agent) / twin.REPORTED_FILE
    for bad in (b"[1, 2]", b"{not json", b'{"x": "' + b"a" * twin.REPORTED_MAX_BYTES + b'"}'):
        reported.write_bytes(bad)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="modelfleet.agent"):
            await agent.collect_reported_properties()
        assert "reported properties ignored" in caplog.text
        assert agent.reported_state().modules["iris"].reported_properties == {"model": "iris", "ok": True}
    secret = tmp_path / "secret.json"
    secret.write_text('{"password": "x"}')
    reported.unlink()
    reported.symlink_to(secret)
    await agent.collect_reported_properties()
    assert agent.reported_state().modules["iris"].reported_properties == {"model": "iris", "ok": True}
    reported.unlink()
    await agent.collect_reported_properties()
    assert agent.reported_state().modules["iris"].reported_properties is None


async def test_a_removed_module_loses_its_twin_folder(tmp_path: Path) -> None:
    agent = Agent(_config(tmp_path), transport=FakeTransport(), runtime=FakeRuntime())
    await _receive(agent, TOPICS.deployment("iris-prod"), _wire(_twin_doc(1, {"threshold": 0.5})))
    assert _folder(agent).is_dir()
    other = document(
        name="iris-prod", version=2, content=manifest({"beta": modelfleet_module("modules/beta", DIGEST_2)})
    )
    await _receive(agent, TOPICS.deployment("iris-prod"), _wire(other))
    assert not _folder(agent).exists()
    assert _folder(agent, "beta").is_dir()


async def test_the_heartbeat_picks_up_reported_properties(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    config = _config(tmp_path).model_copy(update={"heartbeat_s": 0.05})
    transport = FakeTransport()
    agent = Agent(config, transport=transport, runtime=FakeRuntime())
    await agent.start()
    try:
        agent.reconciled.clear()
        transport.inject(TOPICS.deployment("iris-prod"), _wire(_twin_doc(1, {"threshold": 0.5})))
        await asyncio.wait_for(agent.reconciled.wait(), 5)
        monkeypatch.setenv(twin.TWIN_DIR_ENV, str(_folder(agent)))
        twin.report(threshold_in_use=twin.desired()["threshold"])

        async def reported() -> ReportedState:
            while True:
                payload = transport.last(TOPICS.reported("dev-1"))
                if payload:
                    state = ReportedState.model_validate_json(payload)
                    module = state.modules.get("iris")
                    if module is not None and module.reported_properties:
                        return state
                await asyncio.sleep(0.02)

        state = await asyncio.wait_for(reported(), 5)
        assert state.modules["iris"].reported_properties == {"threshold_in_use": 0.5}
    finally:
        await agent.stop()


def test_twin_dir_refuses_names_that_are_no_folder_names(tmp_path: Path) -> None:
    assert twin_dir(tmp_path, "iris") == tmp_path / "runtime" / "twins" / "iris"
    for name in ("..", ".", "../etc", "a/b", "", ".hidden"):
        assert twin_dir(tmp_path, name) is None


# -- the entry script's helper ------------------------------------------------------------------


def test_desired_sees_each_new_file_and_hands_out_copies(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.delenv(twin.TWIN_DIR_ENV, raising=False)
    assert twin.desired() == {}
    twin.report(x=1)  # outside an agent: nothing to do, no error
    monkeypatch.setenv(twin.TWIN_DIR_ENV, str(tmp_path / "twin"))
    assert twin.desired() == {}  # no file yet
    assert twin.write_desired(tmp_path / "twin", {"a": {"b": 1}}) is True
    first = twin.desired()
    assert first == {"a": {"b": 1}}
    first["a"]["b"] = 99
    assert twin.desired() == {"a": {"b": 1}}
    assert twin.write_desired(tmp_path / "twin", {"a": {"b": 1}}) is False
    for value in range(5):  # updates in quick succession are all seen
        twin.write_desired(tmp_path / "twin", {"a": {"b": value}})
        assert twin.desired() == {"a": {"b": value}}


def test_report_refuses_what_is_not_json_or_too_large(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    folder = tmp_path / "twin"
    folder.mkdir()
    monkeypatch.setenv(twin.TWIN_DIR_ENV, str(folder))
    twin.report({"a": 1}, b=2)
    with pytest.raises(ValueError, match="above the limit"):
        twin.report(big="x" * twin.REPORTED_MAX_BYTES)
    with pytest.raises(ValueError, match="JSON"):
        twin.report(obj=object())
    with pytest.raises(ValueError):
        twin.report(nan=float("nan"))
    assert twin.read_reported(folder) == {"a": 1, "b": 2}
    before = (folder / twin.REPORTED_FILE).stat().st_ino
    twin.report(a=1)  # nothing changed: no new file
    assert (folder / twin.REPORTED_FILE).stat().st_ino == before
