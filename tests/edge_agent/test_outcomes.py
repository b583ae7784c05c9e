"""The agent reports only what is true (fake transport and runtime): work in progress shows as
applying, a transient failure is retried by itself, a permanent one is not, errors clear when they
stop being true, and entries of modules no longer wanted go."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from edge_agent import Agent
from edge_agent._planner import Start
from edge_agent._runtime import ModuleStartError
from edge_agent._store import InsufficientDiskError
from modules import RegistryUnreachableError
from modules.transport import Message
from tests.edge_agent._fakes import FakeRuntime, FakeTransport
from tests.edge_agent.test_reconcile import DIGEST_1, DIGEST_2, TOPICS, _config, _doc, _receive, _wire

pytestmark = pytest.mark.timeout(10)


def _agent(tmp_path: Path, **settings) -> tuple[Agent, FakeTransport, FakeRuntime]:  # type: ignore[no-untyped-def]
    transport, runtime = FakeTransport(), FakeRuntime()
    config = _config(tmp_path).model_copy(update=settings)
    return Agent(config, transport=transport, runtime=runtime), transport, runtime


async def _deliver(agent: Agent, topic: str, payload: bytes) -> None:
    """A document through the intake, without a reconcile pass."""
    await agent.on_message(Message(topic, payload, True))


async def _until(predicate, what: str, timeout: float = 5.0) -> None:  # type: ignore[no-untyped-def]
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.01)


async def test_a_deployment_is_applying_while_its_modules_are_brought_up(tmp_path: Path) -> None:
    agent, _, runtime = _agent(tmp_path)
    await _receive(agent, TOPICS.deployment("iris-prod"), _wire(_doc(1, {"iris": DIGEST_1})))
    runtime.gate = asyncio.Event()
    await _deliver(agent, TOPICS.deployment("iris-prod"), _wire(_doc(2, {"iris": DIGEST_2})))
    reconcile = asyncio.create_task(agent.reconcile())
    await _until(lambda: len(runtime.commands) == 2, "replace under way")
    state = agent.reported_state().deployments["iris-prod"]
    assert (state.version, state.outcome) == (2, "applying")
    assert agent.reported_state().modules["iris"].digest == DIGEST_1  # what serves meanwhile
    runtime.gate.set()
    await reconcile
    assert agent.reported_state().deployments["iris-prod"].outcome == "applied"


@pytest.mark.parametrize(
    "error",
    [RegistryUnreachableError("registry at http://127.0.0.1:9 is unreachable"), InsufficientDiskError(10, 1)],
)
async def test_a_transient_failure_is_retried_by_itself(tmp_path: Path, error: Exception) -> None:
    agent, _, runtime = _agent(tmp_path, retry_base_s=0.2)
    runtime.fail["iris"] = error
    runtime.fail_once = True
    await agent.start()
    try:
        await _deliver(agent, TOPICS.deployment("iris-prod"), _wire(_doc(1, {"iris": DIGEST_1})))
        agent.reconciled.clear()
        agent._reconcile_wanted.set()
        await _until(
            lambda: "retrying at" in (getattr(agent.deployments.get("iris-prod"), "reason", None) or ""),
            "the first try judged",
        )
        first = agent.reported_state()
        assert first.deployments["iris-prod"].outcome == "applying"
        assert "retrying at" in (first.deployments["iris-prod"].reason or "")
        assert first.modules["iris"].status == "pending"
        # no new document: the retry timer brings it up
        await _until(lambda: agent.deployments["iris-prod"].outcome == "applied", "retried and applied")
        assert [type(c) for c in runtime.commands] == [Start, Start]
        assert agent.reported_state().modules["iris"].last_error is None
    finally:
        await agent.stop()


async def test_a_permanent_failure_waits_for_a_new_document_and_its_entry_goes_when_unwanted(
    tmp_path: Path,
) -> None:
    agent, _, runtime = _agent(tmp_path, retry_base_s=0.05)
    runtime.fail["beta"] = ModuleStartError("init() raised ValueError: no model")
    await _receive(
        agent, TOPICS.deployment("iris-prod"), _wire(_doc(1, {"alpha": DIGEST_1, "beta": DIGEST_2}))
    )
    assert agent.reported_state().modules["beta"].status == "failed"
    await asyncio.sleep(0.2)
    await agent.reconcile()
    assert [c.name for c in runtime.commands] == ["alpha", "beta"]  # not retried
    # the next version no longer wants beta: its failed entry goes
    await _receive(agent, TOPICS.deployment("iris-prod"), _wire(_doc(2, {"alpha": DIGEST_1})))
    state = agent.reported_state()
    assert "beta" not in state.modules and state.deployments["iris-prod"].outcome == "applied"
    assert agent.persisted.failures == {}


async def test_a_signed_delete_during_an_update_wins_over_the_update(tmp_path: Path) -> None:
    from datetime import UTC, datetime

    from edge_agent._planner import Remove
    from modules.deployment import Tombstone

    agent, _, runtime = _agent(tmp_path)
    await _receive(agent, TOPICS.deployment("iris-prod"), _wire(_doc(1, {"iris": DIGEST_1})))
    runtime.gate = asyncio.Event()
    await _deliver(agent, TOPICS.deployment("iris-prod"), _wire(_doc(2, {"iris": DIGEST_2})))
    update = asyncio.create_task(agent.reconcile())
    await _until(lambda: len(runtime.commands) == 2, "the replace under way")
    tombstone = Tombstone(fleet="factory", name="iris-prod", version=3, deleted_at=datetime.now(UTC))
    await _deliver(agent, TOPICS.deployment("iris-prod"), _wire(tombstone))
    runtime.gate.set()
    await update
    assert agent.deployments["iris-prod"].outcome == "removed"  # not "applied" version 2
    assert "iris-prod" not in agent.persisted.applied_documents
    await agent.reconcile()  # the pass the deletion asked for
    assert isinstance(runtime.commands[-1], Remove) and runtime.records == {}
    assert agent.deployments["iris-prod"].outcome == "removed"
