"""Hostile sizes cost little: refused early, without copies and without a traceback.

How fast is bench territory, not a test's: a pathological (quadratic, unbounded) path would show
up as the per-test timeout."""

from __future__ import annotations

import tracemalloc

import pytest

from modules.deployment import ConditionSyntaxError, DeploymentDocument, parse_condition
from modules.deployment._condition import MAX_CONDITION_DEPTH, MAX_CONDITION_LENGTH
from modules.safe_json import PayloadRefused, loads_limited
from tests.deployment._factories import document

MIB = 1024 * 1024


def test_a_50_mb_payload_is_refused_before_it_is_decoded_or_copied() -> None:
    payload = b'{"a": "' + b"x" * (50 * MIB) + b'"}'
    tracemalloc.start()
    try:
        with pytest.raises(PayloadRefused, match=rf"payload of {len(payload)} bytes is above the limit"):
            loads_limited(payload)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert peak < 1 * MIB, f"refusing allocated {peak} bytes"


@pytest.mark.parametrize(
    "payload",
    [b"[" * 10_000 + b"]" * 10_000, b'{"a":' * 10_000 + b"1" + b"}" * 10_000, b"[" * 1_000_000],
    ids=["arrays", "objects", "unclosed-1MB"],
)
def test_deep_nesting_is_refused_with_a_reason_not_a_recursion_error(payload: bytes) -> None:
    with pytest.raises(PayloadRefused, match="nesting deeper than 64"):
        loads_limited(payload)


def test_a_5000_digit_integer_is_refused_with_a_reason_not_a_value_error() -> None:
    with pytest.raises(PayloadRefused, match="an integer literal of 5000 digits"):
        loads_limited(b'{"version": ' + b"7" * 5000 + b"}")


def test_many_backslashes_and_quotes_near_the_size_limit_are_refused() -> None:
    for payload in (b'["\\' * 349_000, b'"' * MIB, b"\\" * MIB, b'[""' * 349_000):
        with pytest.raises(PayloadRefused):
            loads_limited(payload)


@pytest.mark.parametrize(
    "text",
    ["NOT " * 10_000 + "tags.a = 1", "(" * 10_000 + "tags.a = 1" + ")" * 10_000],
    ids=["not", "parentheses"],
)
def test_a_10000_deep_condition_is_refused_cleanly(text: str) -> None:
    with pytest.raises(ConditionSyntaxError, match="longer than the limit of 4096") as caught:
        parse_condition(text)
    assert len(str(caught.value)) < 500  # the message quotes the start of the condition, not all of it


@pytest.mark.parametrize(
    "text",
    [
        "NOT " * (MAX_CONDITION_DEPTH + 1) + "tags.a = 1",
        "(" * (MAX_CONDITION_DEPTH + 1) + "tags.a = 1" + ")" * (MAX_CONDITION_DEPTH + 1),
        "NOT (" * 17 + "tags.a = 1" + ")" * 17,
    ],
    ids=["not", "parentheses", "mixed"],
)
def test_a_condition_just_over_the_depth_limit_is_refused_within_the_length_limit(text: str) -> None:
    assert len(text) <= MAX_CONDITION_LENGTH
    with pytest.raises(ConditionSyntaxError, match=f"nested deeper than {MAX_CONDITION_DEPTH} levels"):
        parse_condition(text)


def test_a_document_with_a_deep_condition_is_a_validation_error() -> None:
    with pytest.raises(ValueError, match="nested deeper than"):
        document(targetCondition="NOT " * 40 + "tags.a = 1")
    with pytest.raises(ValueError, match="longer than the limit"):
        DeploymentDocument.model_validate({**document().to_json_dict(), "targetCondition": "NOT " * 2000})
