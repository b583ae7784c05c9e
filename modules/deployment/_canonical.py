"""Canonical JSON: the exact bytes a deployment signature covers.

A signature is only checkable if signer and verifier serialise the same document to the same
bytes, whatever JSON library, key order or whitespace each side used. We follow RFC 8785 (JCS):

- object keys sorted by their UTF-16 code units, no whitespace, UTF-8 output;
- strings escaped as ECMAScript's `JSON.stringify` does (only `"`, `\\` and control characters;
  everything else, including non-ASCII, written as itself);
- floats as ECMAScript writes them: the shortest decimal that round-trips, exponents only below
  1e-6 or from 1e21.

Two deliberate departures, both so that the signature covers what a module will actually see:

- integers and floats stay distinct. JCS writes `1` and `1.0` alike, so an attacker could turn an
  env value `1` into `1.0` (a different string in the module's environment, a different type in
  its twin) without breaking the signature. A float whose ECMAScript form is all digits gets `.0`
  appended (`1.0` -> `1.0`, `1e20` -> `100000000000000000000.0`, `-0.0` -> `-0.0`), so a float
  always carries a `.` or an `e` and an integer never does.
- Python integers are written as-is, at any size, where JCS would first round them to a double.

NaN and infinities have no JSON form and are refused. The rules are in docs/manifest.md.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from modules.deployment._errors import CanonicalFormError

_encode_string = json.JSONEncoder(ensure_ascii=False).encode


def canonical_json(value: Any) -> bytes:
    """Serialise plain JSON data (dicts, lists, str, int, float, bool, None) canonically."""
    parts: list[str] = []
    _write(value, parts)
    try:
        return "".join(parts).encode("utf-8")
    except UnicodeEncodeError as exc:
        raise CanonicalFormError(f"string with a lone surrogate has no UTF-8 form: {exc}") from None


def _write(value: Any, out: list[str]) -> None:
    # bool before int: True is an int in Python but a literal in JSON.
    if value is None:
        out.append("null")
    elif value is True:
        out.append("true")
    elif value is False:
        out.append("false")
    elif isinstance(value, int):
        out.append(_format_integer(value))
    elif isinstance(value, float):
        out.append(_format_number(value))
    elif isinstance(value, str):
        out.append(_encode_string(value))
    elif isinstance(value, Mapping):
        _write_object(value, out)
    elif isinstance(value, list | tuple):
        out.append("[")
        for index, item in enumerate(value):
            if index:
                out.append(",")
            _write(item, out)
        out.append("]")
    else:
        raise CanonicalFormError(f"{type(value).__name__} is not a JSON value")


def _format_integer(value: int) -> str:
    try:
        # int.__repr__, not str(): an int subclass (an IntEnum) must not print its own name.
        return int.__repr__(value)
    except ValueError:
        # Python refuses to print integers above its digit limit (4300 by default); json.loads
        # would have refused to read one, so only a caller's own value can get here.
        raise CanonicalFormError("an integer too large to write in decimal") from None


def _write_object(value: Mapping[Any, Any], out: list[str]) -> None:
    for key in value:
        if not isinstance(key, str):
            raise CanonicalFormError(f"object key {key!r} is not a string")
    out.append("{")
    for index, key in enumerate(sorted(value, key=_utf16_order)):
        if index:
            out.append(",")
        out.append(_encode_string(key))
        out.append(":")
        _write(value[key], out)
    out.append("}")


def _utf16_order(key: str) -> bytes:
    # surrogatepass keeps lone surrogates sortable; they are refused later, at encoding.
    return key.encode("utf-16-be", "surrogatepass")


def _format_number(value: float) -> str:
    """ECMAScript Number::toString, marked as a float by `.0` when it would read as an integer."""
    text = _ecmascript_number(value)
    if text.lstrip("-").isdigit():
        # A float must never share bytes with an integer, or a signed `1` could become `1.0`.
        sign = "-" if math.copysign(1.0, value) < 0 else ""
        return sign + text.lstrip("-") + ".0"
    return text


def _ecmascript_number(value: float) -> str:
    """ECMAScript Number::toString, built on Python's shortest round-trip `repr`."""
    if not math.isfinite(value):
        raise CanonicalFormError(f"{value} has no JSON form")
    if value == 0:
        return "0"
    sign = "-" if value < 0 else ""
    _, digit_tuple, exponent = Decimal(repr(abs(value))).as_tuple()
    digits = "".join(map(str, digit_tuple)).rstrip("0")
    assert isinstance(exponent, int)
    # Position of the decimal point relative to the start of `digits` (ECMAScript's n).
    point = exponent + len(digit_tuple)
    count = len(digits)
    if count <= point <= 21:
        text = digits + "0" * (point - count)
    elif 0 < point <= 21:
        text = f"{digits[:point]}.{digits[point:]}"
    elif -6 < point <= 0:
        text = "0." + "0" * -point + digits
    else:
        power = point - 1
        mantissa = digits[0] + (f".{digits[1:]}" if count > 1 else "")
        text = f"{mantissa}e{'+' if power > 0 else '-'}{abs(power)}"
    return sign + text
