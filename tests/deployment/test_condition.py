from __future__ import annotations

import pytest

from modules.deployment import ConditionSyntaxError, DeviceFacts, parse_condition

TWIN = DeviceFacts(
    device_id="press-07",
    tags={
        "site": "plant-1",
        "gpu": True,
        "line": 3,
        "ratio": 0.5,
        "ring": "canary",
        "owner": None,
        "location": {"hall": "B", "floor": 2},
        "zones": ["a", "b"],
        "quote": "o'brien",
    },
    reported={"memoryMb": 2048, "os": "linux"},
    desired={"logLevel": "debug"},
).twin()


def matches(text: str) -> bool:
    return parse_condition(text).matches(TWIN)


@pytest.mark.parametrize(
    "text",
    [
        "*",
        "tags.site = 'plant-1'",
        "tags.site = 'plant-1' AND tags.gpu = true",
        "tags.site != 'plant-2'",
        "tags.site <> 'plant-2'",
        "tags.line = 3",
        "tags.line = 3.0",
        "tags.line > 2 AND tags.line >= 3 AND tags.line < 4 AND tags.line <= 3",
        "tags.ratio < 1",
        "tags.line > -1",
        "tags.site > 'plant-0'",
        "tags.owner = null",
        "tags.location.hall = 'B'",
        "tags.location.floor = 2",
        "tags.quote = 'o''brien'",
        "deviceId = 'press-07'",
        "properties.reported.memoryMb >= 2048",
        "properties.desired.logLevel = 'debug'",
        "tags.ring IN ['canary', 'beta']",
        "tags.line IN [1, 2, 3]",
        "tags.ring NOT IN ['stable']",
        "IS_DEFINED(tags.site)",
        "NOT IS_DEFINED(tags.nonexistent)",
        "is_defined(tags.owner)",
        "tags.site = 'plant-2' OR tags.gpu = true",
        "(tags.site = 'plant-1')",
        "tags.line != tags.location.floor",
        "tags.gpu = TRUE and not tags.ring = 'stable'",
        "tags.x = 1e3 OR tags.line = 3",
    ],
)
def test_condition_matches(text: str) -> None:
    assert matches(text)


@pytest.mark.parametrize(
    "text",
    [
        "tags.site = 'plant-2'",
        "tags.site = 'PLANT-1'",
        "tags.gpu = false",
        "tags.line > 3",
        "tags.ring IN ['stable', 'beta']",
        "tags.ring NOT IN ['canary']",
        "IS_DEFINED(tags.nonexistent)",
        "tags.site = 'plant-1' AND tags.gpu = false",
        "deviceId = 'press-08'",
    ],
)
def test_condition_does_not_match(text: str) -> None:
    assert not matches(text)


@pytest.mark.parametrize(
    "text",
    [
        "tags.nonexistent = 'x'",
        "tags.nonexistent != 'x'",
        "tags.nonexistent < 5",
        "tags.nonexistent IN ['x']",
        "tags.nonexistent NOT IN ['x']",
        "tags.site.deeper = 'x'",
        "properties.reported.nothing.here = 1",
    ],
)
def test_missing_path_compares_false(text: str) -> None:
    assert not matches(text)


def test_not_of_a_missing_path_comparison_is_true() -> None:
    assert matches("NOT tags.nonexistent = 'x'")


@pytest.mark.parametrize(
    "text",
    [
        "tags.line = '3'",
        "tags.line != '3'",
        "tags.site = 1",
        "tags.site > 1",
        "tags.gpu = 1",
        "tags.gpu > false",
        "tags.line IN ['3']",
        "tags.location = 'B'",
        "tags.zones = 'a'",
        "tags.zones IN ['a']",
        "tags.zones NOT IN ['c']",
        "tags.owner < 1",
        "tags.site = null",
    ],
)
def test_type_mismatch_is_false_not_an_error(text: str) -> None:
    assert not matches(text)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # NOT binds tighter than AND, which binds tighter than OR: (NOT a) OR (b AND c).
        ("NOT tags.gpu = true OR tags.line = 3 AND tags.site = 'plant-1'", True),
        ("NOT tags.gpu = true OR tags.line = 3 AND tags.site = 'plant-2'", False),
        ("NOT (tags.gpu = true OR tags.line = 3) AND tags.site = 'plant-1'", False),
        ("tags.site = 'plant-2' AND tags.gpu = true OR tags.line = 3", True),
        ("tags.site = 'plant-2' AND (tags.gpu = true OR tags.line = 3)", False),
        ("NOT NOT tags.gpu = true", True),
    ],
)
def test_precedence_is_not_then_and_then_or(text: str, expected: bool) -> None:
    assert matches(text) is expected


def test_keywords_are_case_insensitive_but_values_and_paths_are_not() -> None:
    assert matches("tags.ring in ['canary'] and Not tags.gpu = False")
    assert not matches("tags.Site = 'plant-1'")


def test_a_condition_is_compiled_once_and_evaluated_against_many_devices() -> None:
    condition = parse_condition("tags.line IN [1, 2]")
    devices = [DeviceFacts(f"d{n}", tags={"line": n}).twin() for n in range(5)]

    assert [condition.matches(twin) for twin in devices] == [False, True, True, False, False]
    assert parse_condition("tags.line IN [1, 2]") is condition


@pytest.mark.parametrize(
    ("text", "column"),
    [
        ("", 1),
        ("tags.site =", 12),
        ("tags.site = 'plant-1", 13),
        ("tags.site == 'x'", 12),
        ("tags.site 'x'", 11),
        ("site = 'x'", 1),
        ("tags.a = 1 AND", 15),
        ("tags.a = 1 tags.b = 2", 12),
        ("(tags.a = 1", 12),
        ("tags.a IN [1, 2", 16),
        ("tags.a IN 1", 11),
        ("tags.a NOT = 1", 12),
        ("tags.a = 1 & tags.b = 2", 12),
        ("IS_DEFINED('x')", 12),
        ("* AND tags.a = 1", 3),
        ("tags.a = __import__", 10),
        ("tags.a IN [tags.b]", 12),
    ],
)
def test_syntax_error_reports_the_column(text: str, column: int) -> None:
    with pytest.raises(ConditionSyntaxError) as caught:
        parse_condition(text)

    assert caught.value.column == column
    assert f"column {column}" in str(caught.value)


def test_nesting_up_to_the_limit_parses_and_evaluates() -> None:
    nots = parse_condition("NOT " * 32 + "tags.site = 'plant-1'")
    parens = parse_condition("(" * 32 + "tags.site = 'plant-1'" + ")" * 32)
    chained = parse_condition(" AND ".join(["(NOT tags.site = 'x')"] * 150))

    assert nots.matches(TWIN) and parens.matches(TWIN) and chained.matches(TWIN)


@pytest.mark.parametrize(
    ("text", "column"),
    [
        ("NOT " * 33 + "tags.a = 1", 129),
        ("(" * 33 + "tags.a = 1" + ")" * 33, 33),
        ("tags.a = 1 OR " + "NOT (" * 16 + "NOT tags.a = 1" + ")" * 16, 95),
    ],
)
def test_nesting_past_the_limit_is_refused_at_the_token_that_went_too_deep(text: str, column: int) -> None:
    with pytest.raises(ConditionSyntaxError, match="nested deeper than 32 levels") as caught:
        parse_condition(text)

    assert caught.value.column == column


def test_length_limit_is_4096_characters() -> None:
    fits = "tags.a = '" + "x" * (4096 - 11) + "'"
    assert len(fits) == 4096
    parse_condition(fits)
    with pytest.raises(ConditionSyntaxError, match="condition of 4097 characters") as caught:
        parse_condition(fits + " ")
    assert caught.value.column == 4097
