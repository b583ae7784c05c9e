from __future__ import annotations

import json
import math

import pytest

from modules.deployment import CanonicalFormError, canonical_json


def test_keys_are_sorted_and_whitespace_removed() -> None:
    assert (
        canonical_json({"b": [1, {"d": None, "c": True}], "a": "x"})
        == b'{"a":"x","b":[1,{"c":true,"d":null}]}'
    )


def test_key_order_and_formatting_of_the_input_do_not_matter() -> None:
    one = json.loads('{"z": 1, "a": {"y": [1, 2], "b": "é"}}')
    two = json.loads('{\n  "a": {"b": "\\u00e9", "y": [1, 2]},\n  "z": 1\n}')
    assert canonical_json(one) == canonical_json(two)


def test_keys_sort_by_utf16_code_units_as_rfc_8785_requires() -> None:
    # U+20AC is above U+1F600 in code points but below its UTF-16 surrogate pair.
    assert canonical_json({"\U0001f600": 1, "\u20ac": 2}) == '{"\u20ac":2,"\U0001f600":1}'.encode()


def test_strings_escape_only_quotes_backslashes_and_control_characters() -> None:
    assert canonical_json('é"\\\n\x01/\u2028') == '"é\\"\\\\\\n\\u0001/\u2028"'.encode()


@pytest.mark.parametrize(
    ("number", "text"),
    [
        (1.0, "1"),
        (-0.0, "0"),
        (0.1, "0.1"),
        (100.0, "100"),
        (1e20, "100000000000000000000"),
        (1e21, "1e+21"),
        (1e-6, "0.000001"),
        (1e-7, "1e-7"),
        (123.456, "123.456"),
        (5e-324, "5e-324"),
        (2**70, str(2**70)),
    ],
)
def test_numbers_are_written_as_ecmascript_does(number: float, text: str) -> None:
    assert canonical_json(number) == text.encode()


@pytest.mark.parametrize("value", [math.nan, math.inf, {1: "a"}, {"a": {1, 2}}, "\ud800"])
def test_values_without_a_canonical_form_are_refused(value: object) -> None:
    with pytest.raises(CanonicalFormError):
        canonical_json(value)
