from __future__ import annotations

import json
import math

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from modules.deployment import (
    BadSignatureError,
    CanonicalFormError,
    canonical_json,
    sign_document,
    verify_document,
)
from tests.deployment._factories import document, manifest, modelfleet_module


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
        (0.1, "0.1"),
        (-2.5, "-2.5"),
        (1e21, "1e+21"),
        (1e-6, "0.000001"),
        (1e-7, "1e-7"),
        (123.456, "123.456"),
        (5e-324, "5e-324"),
        (1e100, "1e+100"),
        (2**70, str(2**70)),
        (-3, "-3"),
        (0, "0"),
    ],
)
def test_numbers_are_written_as_ecmascript_does(number: float, text: str) -> None:
    assert canonical_json(number) == text.encode()


@pytest.mark.parametrize(
    ("number", "text"),
    [
        (1.0, "1.0"),
        (0.0, "0.0"),
        (-0.0, "-0.0"),
        (-1.0, "-1.0"),
        (100.0, "100.0"),
        (1e20, "100000000000000000000.0"),
    ],
)
def test_integral_floats_keep_a_decimal_point(number: float, text: str) -> None:
    # JCS writes these as integers; the signature must tell them apart (docs/manifest.md).
    assert canonical_json(number) == text.encode()


@pytest.mark.parametrize(
    ("one", "other"),
    [(1, 1.0), (0, 0.0), (0.0, -0.0), (1, True), (0, False), (-5, -5.0), (10**20, 1e20)],
)
def test_ints_floats_and_booleans_never_share_canonical_bytes(one: object, other: object) -> None:
    assert canonical_json(one) != canonical_json(other)
    assert canonical_json({"v": one}) != canonical_json({"v": other})


def test_every_float_reads_back_as_the_same_float_and_every_int_as_the_same_int() -> None:
    values = [1.0, -0.0, 1e20, 1e21, 0.05, 5e-324, 1.7976931348623157e308, 7, -(2**64)]
    for value in values:
        again = json.loads(canonical_json(value))
        assert type(again) is type(value) and again == value
        assert math.copysign(1, again) == math.copysign(1, value)


def test_a_signed_integer_env_value_turned_into_a_float_fails_verification() -> None:
    key = Ed25519PrivateKey.generate()
    iris = modelfleet_module()
    iris["env"] = {"WORKERS": {"value": 1}}
    wire = json.dumps(sign_document(document(content=manifest({"iris": iris})), key).to_json_dict())
    assert '"WORKERS": {"value": 1}' in wire
    tampered = json.loads(wire.replace('"WORKERS": {"value": 1}', '"WORKERS": {"value": 1.0}'))

    assert verify_document(json.loads(wire), [key.public_key()])
    with pytest.raises(BadSignatureError):
        verify_document(tampered, [key.public_key()])


def test_integer_above_pythons_digit_limit_is_refused_not_a_value_error() -> None:
    with pytest.raises(CanonicalFormError):
        canonical_json({"n": 10**5000})


@pytest.mark.parametrize("value", [math.nan, math.inf, {1: "a"}, {"a": {1, 2}}, "\ud800"])
def test_values_without_a_canonical_form_are_refused(value: object) -> None:
    with pytest.raises(CanonicalFormError):
        canonical_json(value)
