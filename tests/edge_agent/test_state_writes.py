"""The agent's state file: fewer writes, none on the event loop, never out of order, and still
durable where a crash would otherwise lose something (a floor, an instance record)."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

import edge_agent._state as state_module
from edge_agent import Agent
from edge_agent._planner import Start
from edge_agent._state import PersistedState, StateFile
from modules.transport import Message
from tests.edge_agent._fakes import FakeRuntime, FakeTransport
from tests.edge_agent.test_reconcile import DIGEST_1, DIGEST_2, TOPICS, _config, _doc, _receive, _wire

pytestmark = pytest.mark.timeout(10)


def _agent(tmp_path: Path, runtime: FakeRuntime | None = None) -> Agent:
    return Agent(_config(tmp_path), transport=FakeTransport(), runtime=runtime or FakeRuntime())


def _on_disk(agent: Agent) -> PersistedState:
    return StateFile(agent.config.data_dir / "state.json").load()


async def test_a_new_version_costs_two_writes_not_three(tmp_path: Path) -> None:
    agent = _agent(tmp_path)
    await _receive(agent, TOPICS.deployment("iris-prod"), _wire(_doc(1, {"iris": DIGEST_1})))
    before = agent.state_file.writes
    await agent.on_message(Message(TOPICS.deployment("iris-prod"), _wire(_doc(2, {"iris": DIGEST_2})), True))
    # the document and its floor are on disk when on_message returns ...
    assert agent.state_file.writes == before + 1
    assert _on_disk(agent).last_versions["iris-prod"] == 2
    await agent.reconcile()
    # ... and the pass (its outcome and its verdicts) is one more write
    assert agent.state_file.writes == before + 2
    saved = _on_disk(agent)
    assert saved.modules["iris"].digest == DIGEST_2
    assert saved.applied_documents["iris-prod"]["version"] == 2


async def test_a_message_that_changes_nothing_writes_nothing(tmp_path: Path) -> None:
    agent = _agent(tmp_path)
    wire = _wire(_doc(1, {"iris": DIGEST_1}))
    await _receive(agent, TOPICS.deployment("iris-prod"), wire)
    before = agent.state_file.writes
    await agent.on_message(Message(TOPICS.deployment("iris-prod"), wire, True))  # a retained redelivery
    await agent.reconcile()
    assert agent.state_file.writes == before


async def test_the_disk_work_runs_off_the_event_loop(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    threads: list[int] = []
    real = state_module.write_atomic

    def recording(*args, **kwargs):  # type: ignore[no-untyped-def]
        threads.append(threading.get_ident())
        real(*args, **kwargs)

    monkeypatch.setattr(state_module, "write_atomic", recording)
    agent = _agent(tmp_path)
    await _receive(agent, TOPICS.deployment("iris-prod"), _wire(_doc(1, {"iris": DIGEST_1})))
    assert threads and threading.get_ident() not in threads


async def test_an_instance_record_is_on_disk_before_the_next_command_starts(tmp_path: Path) -> None:
    seen_on_disk: dict[str, set[str]] = {}

    class Watching(FakeRuntime):
        async def start(self, command: Start):  # type: ignore[no-untyped-def]
            # what a crash right now would leave for the next agent to re-adopt
            seen_on_disk[command.name] = set(StateFile(tmp_path / "agent" / "state.json").load().modules)
            return await super().start(command)

    agent = _agent(tmp_path, Watching())
    await _receive(
        agent, TOPICS.deployment("iris-prod"), _wire(_doc(1, {"alpha": DIGEST_1, "beta": DIGEST_2}))
    )
    first, second = sorted(seen_on_disk, key=lambda name: len(seen_on_disk[name]))
    assert seen_on_disk[first] == set()
    assert seen_on_disk[second] == {first}
    assert set(_on_disk(agent).modules) == {"alpha", "beta"}


async def test_a_failed_write_is_raised_by_flush_and_retried(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    agent = _agent(tmp_path)
    real = state_module.write_atomic

    def full(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(state_module, "write_atomic", full)
    with pytest.raises(OSError, match="No space left"):
        await agent.on_message(
            Message(TOPICS.deployment("iris-prod"), _wire(_doc(1, {"iris": DIGEST_1})), True)
        )
    assert not (tmp_path / "agent" / "state.json").exists()
    monkeypatch.setattr(state_module, "write_atomic", real)
    await agent.flush()  # the change is still wanted on disk, and now it gets there
    assert _on_disk(agent).last_versions["iris-prod"] == 1


def test_an_older_snapshot_never_replaces_a_newer_one(tmp_path: Path) -> None:
    file = StateFile(tmp_path / "state.json")
    old = file.snapshot(PersistedState(last_versions={"a": 1}))
    new = file.snapshot(PersistedState(last_versions={"a": 2}))
    assert file.write(*new) is True
    assert file.write(*old) is False  # a slow writer that lost the race
    assert file.load().last_versions == {"a": 2}
    assert file.writes == 1


async def test_the_file_is_what_the_state_was_and_loads_back(tmp_path: Path) -> None:
    agent = _agent(tmp_path)
    await _receive(agent, TOPICS.deployment("iris-prod"), _wire(_doc(1, {"iris": DIGEST_1})))
    await _receive(agent, TOPICS.deployment("iris-prod"), _wire(_doc(2, {"iris": DIGEST_2})))
    text = (tmp_path / "agent" / "state.json").read_text()
    assert json.loads(text) == agent.persisted.model_dump(mode="json")
    loaded = _on_disk(agent)
    assert loaded.documents == agent.persisted.documents  # the signed form, byte for byte in JSON
    assert loaded == agent.persisted


async def test_a_stored_document_is_validated_once_not_every_pass(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    agent = _agent(tmp_path)
    await _receive(agent, TOPICS.deployment("iris-prod"), _wire(_doc(1, {"iris": DIGEST_1})))
    again = _agent(tmp_path)
    again._load_state()
    calls: list[object] = []
    from modules.deployment import DeploymentDocument

    real = DeploymentDocument.model_validate

    def counting(raw, *args, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(raw)
        return real(raw, *args, **kwargs)

    monkeypatch.setattr(DeploymentDocument, "model_validate", counting)
    first = again._documents()
    assert len(calls) == 2  # the stored document and the applied one: two dicts once loaded
    second = again._documents()
    assert len(calls) == 2 and first == second
