"""The gate for control-plane documents: only signed, well-formed, newer documents pass."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge_agent._intake import Accepted, Cleared, Deleted, Intake, Refused, Unchanged
from modules.deployment import Tombstone, sign_document
from modules.topics import FleetTopics
from tests.deployment._factories import document

TOPICS = FleetTopics("factory")
KEY = Ed25519PrivateKey.generate()


@pytest.fixture
def intake() -> Intake:
    return Intake(TOPICS, "dev-1", [KEY.public_key()])


def _wire(version: int = 1, key: Ed25519PrivateKey = KEY, **fields) -> tuple[bytes, dict]:
    raw = sign_document(document(version=version, **fields), key).to_json_dict()
    return json.dumps(raw).encode(), raw


def test_signed_document_is_accepted(intake: Intake) -> None:
    payload, raw = _wire()
    slot, verdict = intake.evaluate(TOPICS.deployment("iris-prod"), payload, {}, {})
    assert slot == "iris-prod" and isinstance(verdict, Accepted) and verdict.raw == raw


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda: json.dumps(document().to_json_dict()).encode(), "not signed"),
        (lambda: _wire(key=Ed25519PrivateKey.generate())[0], "not trusted"),
        (lambda: _wire()[0].replace(b"plant-1", b"plant-2"), "signature"),
        (lambda: b"{not json", "not JSON"),
        (lambda: b"[1, 2]", "not a JSON object"),
    ],
)
def test_bad_documents_are_refused_with_a_reason(intake: Intake, make, reason: str) -> None:
    _, verdict = intake.evaluate(TOPICS.deployment("iris-prod"), make(), {}, {})
    assert isinstance(verdict, Refused)
    assert reason.lower() in verdict.reason.lower(), verdict.reason


def test_replayed_version_is_refused_but_the_same_document_again_is_unchanged(intake: Intake) -> None:
    payload, raw = _wire(version=3)
    topic = TOPICS.deployment("iris-prod")
    assert isinstance(intake.evaluate(topic, payload, {"iris-prod": raw}, {"iris-prod": 3})[1], Unchanged)
    old, _ = _wire(version=2)
    verdict = intake.evaluate(topic, old, {"iris-prod": raw}, {"iris-prod": 3})[1]
    assert isinstance(verdict, Refused) and "replayed" in verdict.reason
    other, _ = _wire(version=3, priority=9)
    assert isinstance(intake.evaluate(topic, other, {"iris-prod": raw}, {"iris-prod": 3})[1], Refused)


def test_document_on_another_deployments_topic_or_fleet_is_refused(intake: Intake) -> None:
    payload, _ = _wire()
    verdict = intake.evaluate(TOPICS.deployment("other"), payload, {}, {})[1]
    assert isinstance(verdict, Refused) and "topic" in verdict.reason
    foreign = Intake(FleetTopics("elsewhere"), "dev-1", [KEY.public_key()])
    verdict = foreign.evaluate(FleetTopics("elsewhere").deployment("iris-prod"), payload, {}, {})[1]
    assert isinstance(verdict, Refused) and "fleet" in verdict.reason


def test_an_empty_retained_payload_is_an_unsigned_clear_that_changes_nothing(intake: Intake) -> None:
    assert intake.evaluate(TOPICS.deployment("iris-prod"), b"", {}, {}) == ("iris-prod", Cleared("iris-prod"))


def test_a_signed_tombstone_deletes_and_sets_the_floor(intake: Intake) -> None:
    tombstone = sign_document(
        Tombstone(fleet="factory", name="iris-prod", version=4, deleted_at=datetime.now(UTC)), KEY
    )
    wire = json.dumps(tombstone.to_json_dict()).encode()
    topic = TOPICS.deployment("iris-prod")
    assert intake.evaluate(topic, wire, {}, {"iris-prod": 3}) == (
        "iris-prod",
        Deleted("iris-prod", "iris-prod", 4),
    )
    _, replayed = intake.evaluate(topic, wire, {"iris-prod": {}}, {"iris-prod": 4})
    assert isinstance(replayed, Refused) and "replayed deletion" in replayed.reason
    forged = json.dumps(
        sign_document(
            Tombstone(fleet="factory", name="iris-prod", version=9, deleted_at=datetime.now(UTC)),
            Ed25519PrivateKey.generate(),
        ).to_json_dict()
    ).encode()
    _, untrusted = intake.evaluate(topic, forged, {}, {})
    assert isinstance(untrusted, Refused) and "not trusted" in untrusted.reason


def test_device_override_must_name_this_device(intake: Intake) -> None:
    mine, _ = _wire(device="dev-1", name="override")
    theirs, _ = _wire(device="dev-2", name="override")
    assert isinstance(intake.evaluate(TOPICS.desired("dev-1"), mine, {}, {})[1], Accepted)
    assert isinstance(intake.evaluate(TOPICS.desired("dev-1"), theirs, {}, {})[1], Refused)
