"""Work agents in one process share (the simulator runs a fleet in one): a document's bytes are
checked once, facts about the machine are sampled, the provider probe runs once. Never shared:
anything that depends on what a device trusts or has accepted."""

from __future__ import annotations

import asyncio
import os
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

import edge_agent._device_info as device_info_module
import edge_agent._intake as intake_module
from edge_agent._device_info import device_info, execution_providers
from edge_agent._intake import Accepted, Intake, Refused, Unchanged
from tests.edge_agent.test_reconcile import DIGEST_1, KEY, TOPICS, _doc, _wire

pytestmark = pytest.mark.timeout(20)


def _intake(*keys: Ed25519PrivateKey, device: str = "dev-1", max_bytes: int = 1 << 20) -> Intake:
    return Intake(TOPICS, device, [k.public_key() for k in keys], max_payload_bytes=max_bytes)


def test_two_agents_share_one_check_of_the_same_bytes(monkeypatch: pytest.MonkeyPatch) -> None:
    checks: list[bytes] = []
    real = Intake._check_now

    def counting(self: Intake, payload: bytes):  # type: ignore[no-untyped-def]
        checks.append(payload)
        return real(self, payload)

    monkeypatch.setattr(Intake, "_check_now", counting)
    wire = _wire(_doc(1, {"iris": DIGEST_1}, name="shared-check"))
    topic = TOPICS.deployment("shared-check")
    _, first = _intake(KEY, device="dev-1").evaluate(topic, wire, {}, {})
    _, second = _intake(KEY, device="dev-2").evaluate(topic, wire, {}, {})
    assert isinstance(first, Accepted) and isinstance(second, Accepted)
    assert len(checks) == 1
    assert second.document is first.document and second.raw is first.raw  # one copy in memory


def test_what_a_device_has_accepted_is_still_its_own() -> None:
    wire = _wire(_doc(1, {"iris": DIGEST_1}, name="own-floor"))
    topic = TOPICS.deployment("own-floor")
    _, accepted = _intake(KEY).evaluate(topic, wire, {}, {})
    assert isinstance(accepted, Accepted)
    _, again = _intake(KEY).evaluate(topic, wire, {"own-floor": accepted.raw}, {"own-floor": 1})
    assert isinstance(again, Unchanged)
    _, replayed = _intake(KEY).evaluate(topic, wire, {}, {"own-floor": 2})
    assert isinstance(replayed, Refused) and "replayed" in replayed.reason


def test_a_device_that_does_not_trust_the_key_refuses_what_another_accepted() -> None:
    wire = _wire(_doc(1, {"iris": DIGEST_1}, name="other-keys"))
    topic = TOPICS.deployment("other-keys")
    _, trusted = _intake(KEY).evaluate(topic, wire, {}, {})
    assert isinstance(trusted, Accepted)
    _, untrusted = _intake(Ed25519PrivateKey.generate()).evaluate(topic, wire, {}, {})
    assert isinstance(untrusted, Refused) and "not trusted" in untrusted.reason
    _, small = _intake(KEY, max_bytes=64).evaluate(topic, wire, {}, {})
    assert isinstance(small, Refused) and "malformed" in small.reason


def test_the_shared_checks_are_bounded() -> None:
    topic = TOPICS.deployment("flood")
    intake = _intake(KEY)
    for i in range(intake_module.CHECKED_KEPT * 2):
        intake.evaluate(topic, b'{"forged": %d}' % i, {}, {})
    assert len(intake_module._checked) <= intake_module.CHECKED_KEPT


def test_device_facts_are_sampled_not_read_per_report(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(device_info_module, "_memory", None)
    reads: list[Path] = []
    real = Path.read_text

    def counting(self: Path, *args, **kwargs):  # type: ignore[no-untyped-def]
        if str(self) == "/proc/meminfo":
            reads.append(self)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Path, "read_text", counting)
    first = device_info(tmp_path, ["CPUExecutionProvider"], "key")
    for _ in range(10):
        later = device_info(tmp_path, ["CPUExecutionProvider"], "key")
    assert len(reads) == 1
    assert later.memory_total_bytes == first.memory_total_bytes
    assert later.disk_free_bytes == first.disk_free_bytes
    monkeypatch.setattr(device_info_module.time, "monotonic", lambda: 1e12)  # the sample is old
    device_info(tmp_path, [], None)
    assert len(reads) == 2


async def test_the_provider_probe_runs_once_per_process(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    python = tmp_path / "python"
    python.write_text(f"#!/bin/sh\necho x >> {runs}\nsleep 0.2\necho '[\"FakeExecutionProvider\"]'\n")
    python.chmod(python.stat().st_mode | stat.S_IXUSR)
    together = await asyncio.gather(*(execution_providers(str(python)) for _ in range(5)))
    later = await execution_providers(str(python))
    assert together == [["FakeExecutionProvider"]] * 5 and later == ["FakeExecutionProvider"]
    assert runs.read_text().count("x") == 1
    later.append("changed by a caller")
    assert await execution_providers(str(python)) == ["FakeExecutionProvider"]


async def test_a_probe_that_could_not_run_is_tried_again(tmp_path: Path) -> None:
    python = tmp_path / "not-there-yet"
    assert await execution_providers(str(python)) == []
    python.write_text("#!/bin/sh\necho '[\"CPUExecutionProvider\"]'\n")
    python.chmod(0o755)
    assert os.access(python, os.X_OK)
    assert await execution_providers(str(python)) == ["CPUExecutionProvider"]
