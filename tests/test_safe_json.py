"""`loads_limited`: plain JSON in, plain objects out, and one clean refusal for everything else."""

from __future__ import annotations

import json

import pytest

from modules._errors import ModelfleetError
from modules.safe_json import DEFAULT_MAX_PAYLOAD_BYTES, PayloadRefused, loads_limited


@pytest.mark.parametrize(
    "text",
    [
        '{"a": 1, "b": [1.5, -0.0, 1e5, true, false, null, "x\\"y\\\\", {}], "c": "é\\u00e9"}',
        "[]",
        '"just a string"',
        "  42  ",
        '{"nested": [[[[["deep but fine"]]]]]}',
        '{"brackets in strings": "[[[[{{{{", "escaped": "\\"[[[["}',
    ],
)
def test_plain_json_parses_exactly_as_json_loads_does(text: str) -> None:
    result = loads_limited(text.encode())

    assert result == json.loads(text)
    assert type(result) is type(json.loads(text))


def test_ints_and_floats_stay_apart() -> None:
    assert [type(v) for v in loads_limited(b"[1, 1.0, 1e2]")] == [int, float, float]


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"x" * (DEFAULT_MAX_PAYLOAD_BYTES + 1), "1048577 bytes is above the limit of 1048576"),
        (b"[" * 65 + b"]" * 65, "nesting deeper than 64"),
        (b'{"a":' * 65 + b"1" + b"}" * 65, "nesting deeper than 64"),
        (b"1" * 101, "an integer literal of 101 digits"),
        (b"-" + b"1" * 101, "an integer literal of 101 digits"),
        (b"0." + b"1" * 100, "a number literal of 102 characters"),
        (b"1e400", "too large for a float"),
        (b"[NaN]", "NaN is not a JSON value"),
        (b"-Infinity", "-Infinity is not a JSON value"),
        (b'"\xff"', "not UTF-8"),
        (b'"\xed\xa0\x80"', "not UTF-8"),  # an encoded surrogate is not UTF-8
        ('{"a": 1}'.encode("utf-16"), "not UTF-8"),
        (b'{"a": 1, "a": 2}', "duplicate key 'a'"),
        (b'[{"x": {"k": 1, "k": 1}}]', "duplicate key 'k'"),
        (b"", "not JSON: Expecting value"),
        (b"{not json", "not JSON"),
        (b"[1, 2", "not JSON"),
        (b'{"a": 1} x', "not JSON: Extra data"),
        (b'"unterminated', "not JSON"),
        (b"'single'", "not JSON"),
    ],
)
def test_bad_payloads_are_refused_with_a_reason(payload: bytes, reason: str) -> None:
    with pytest.raises(PayloadRefused) as caught:
        loads_limited(payload)

    assert reason in str(caught.value)
    assert caught.value.reason == str(caught.value)


def test_limits_are_inclusive_and_adjustable() -> None:
    assert loads_limited(b"[" * 64 + b"]" * 64) is not None
    assert loads_limited(b"9" * 100) == int("9" * 100)
    assert loads_limited(b"[[1]]", max_depth=2) == [[1]]
    with pytest.raises(PayloadRefused, match="deeper than 1"):
        loads_limited(b"[[1]]", max_depth=1)
    with pytest.raises(PayloadRefused, match="above the limit of 4"):
        loads_limited(b"12345", max_bytes=4)
    with pytest.raises(PayloadRefused, match="3 digits"):
        loads_limited(b"123", max_int_digits=2)


def test_brackets_inside_strings_do_not_count_as_nesting() -> None:
    text = json.dumps({"s": "[" * 500 + '\\"' + "{" * 500, "t": ["\\", "]]]", "\\\\[["], "u": [[[1]]]})

    assert loads_limited(text.encode()) == json.loads(text)


def test_an_escaped_backslash_before_a_quote_ends_the_string() -> None:
    # "\\" closes the string, so the brackets after it are real nesting.
    payload = b'["\\\\"' + b",[" * 70 + b"]" * 70 + b"]"
    with pytest.raises(PayloadRefused, match="nesting deeper than 64"):
        loads_limited(payload)


def test_bytearray_is_accepted_and_other_types_are_a_programming_error() -> None:
    assert loads_limited(bytearray(b'{"a": 1}')) == {"a": 1}
    with pytest.raises(TypeError):
        loads_limited('{"a": 1}')  # type: ignore[arg-type]


def test_payload_refused_is_a_modelfleet_error() -> None:
    assert issubclass(PayloadRefused, ModelfleetError)
