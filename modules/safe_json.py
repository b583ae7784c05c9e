"""JSON from the network, parsed so that bad input costs little and ends as one clean refusal.

`json.loads` trusts its input more than a control plane can: it decodes a payload of any size,
recurses once per nesting level (a deep enough document escapes as `RecursionError`), converts
integer literals of thousands of digits (quadratic work, then a `ValueError` above Python's 4300
digit limit), accepts `NaN`/`Infinity` and lets `1e400` become infinity, and keeps only the last of
two duplicate keys, which makes a signed document mean one thing to us and another to a parser
that keeps the first. `loads_limited` checks the cheap things first (size, then nesting, by a
scan over the raw bytes) and refuses every one of these with a `PayloadRefused`, so a caller has
exactly one exception to turn into a verdict.
"""

from __future__ import annotations

import json
import math
from itertools import accumulate
from typing import Any

from modules._errors import ModelfleetError

DEFAULT_MAX_PAYLOAD_BYTES = 1_048_576
"""1 MiB: far above any real deployment or keys document, far below what hurts a small device."""
DEFAULT_MAX_DEPTH = 64
"""Nesting levels of arrays and objects; IoT Edge manifests need about ten."""
DEFAULT_MAX_INT_DIGITS = 100
"""Digits of one number literal; versions, ports and sizes need a handful."""

# Every byte except the four that open or close a level, for `bytes.translate` to delete.
_NOT_BRACKETS = bytes(byte for byte in range(256) if byte not in b"[]{}")
_DEPTH_STEP = {ord("["): 1, ord("{"): 1, ord("]"): -1, ord("}"): -1}


class PayloadRefused(ModelfleetError):
    """A payload refused before or while parsing; `reason` says which limit or rule it broke."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


def loads_limited(
    payload: bytes,
    *,
    max_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
    max_depth: int = DEFAULT_MAX_DEPTH,
    max_int_digits: int = DEFAULT_MAX_INT_DIGITS,
) -> Any:
    """Parse UTF-8 JSON into plain dicts, lists, str, int, float, bool and None, or refuse it.

    Every refusal is a `PayloadRefused`: above `max_bytes` (checked before anything is decoded
    or copied), nested deeper than `max_depth`, a number literal longer than `max_int_digits`
    digits, not UTF-8, `NaN`/`Infinity` or a number too large for a float, a duplicate key in
    an object, or not JSON at all. Anything that is not bytes is a programming error
    (`TypeError`), not bad input.
    """
    if not isinstance(payload, bytes | bytearray):
        raise TypeError(f"loads_limited takes bytes, not {type(payload).__name__}")
    size = len(payload)
    if size > max_bytes:
        raise PayloadRefused(f"payload of {size} bytes is above the limit of {max_bytes}")
    _check_depth(payload, max_depth)
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PayloadRefused(f"not UTF-8: {exc.reason} at byte {exc.start}") from None
    try:
        return json.loads(
            text,
            parse_int=_int_parser(max_int_digits),
            parse_float=_float_parser(max_int_digits),
            parse_constant=_refuse_constant,
            object_pairs_hook=_object_without_duplicates,
        )
    except json.JSONDecodeError as exc:
        raise PayloadRefused(f"not JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})") from None
    except RecursionError:
        # Only reachable when a caller raises max_depth towards the interpreter's recursion limit.
        raise PayloadRefused(f"nesting deeper than this interpreter can parse (limit {max_depth})") from None


def _check_depth(payload: bytes | bytearray, max_depth: int) -> None:
    """Refuse deep nesting before `json.loads` recurses into it, with C-speed passes over the bytes.

    The number of `[` and `{` bounds the depth, so a typical document is settled by two counts.
    Otherwise strings are cut out, since their brackets do not nest, and the running sum of the
    remaining brackets is the depth. Bytes, not text: in UTF-8 no byte of a multi-byte character
    is ASCII, so quotes, backslashes and brackets are found without decoding. The cut is exact for
    the part of a payload that `json.loads` gets through before it fails, so it never recurses
    deeper than this check saw.
    """
    if payload.count(b"[") + payload.count(b"{") <= max_depth:
        return
    if b"\\" in payload:
        # Escaped backslashes first, left to right as JSON pairs them; a `\"` left over is then
        # a quote inside a string, not the end of one.
        payload = payload.replace(b"\\\\", b"").replace(b'\\"', b"")
    outside_strings = b"".join(payload.split(b'"')[::2])
    brackets = outside_strings.translate(None, _NOT_BRACKETS)
    if brackets.count(b"[") + brackets.count(b"{") <= max_depth:
        return
    deepest = max(accumulate(map(_DEPTH_STEP.__getitem__, brackets)))
    if deepest > max_depth:
        raise PayloadRefused(f"nesting deeper than {max_depth}")


def _int_parser(max_digits: int) -> Any:
    def parse_int(literal: str) -> int:
        digits = len(literal) - literal.startswith("-")
        if digits > max_digits:
            raise PayloadRefused(f"an integer literal of {digits} digits (the limit is {max_digits})")
        return int(literal)

    return parse_int


def _float_parser(max_digits: int) -> Any:
    def parse_float(literal: str) -> float:
        # Counted in characters (point, exponent and sign included): a real float needs ~25.
        if len(literal) > max_digits:
            raise PayloadRefused(f"a number literal of {len(literal)} characters (the limit is {max_digits})")
        value = float(literal)
        if not math.isfinite(value):
            raise PayloadRefused(f"the number {literal} is too large for a float")
        return value

    return parse_float


def _refuse_constant(name: str) -> Any:
    raise PayloadRefused(f"not JSON: {name} is not a JSON value")


def _object_without_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise PayloadRefused(f"duplicate key {key[:100]!r} in an object")
            seen.add(key)
    return result
