"""JSON the host reads and writes, and entry scripts parse, through orjson where it is the same.

Parsing a 16 KB body of floats takes the standard library about 0.28 ms and orjson about 0.03 ms,
and per-request Python work is what limits a host on a small device. The standard library stays
the reference for what is accepted, what comes back and how errors read. orjson is stricter,
never looser: what it refuses (NaN, Infinity, lone surrogates, a byte-order mark, numbers beyond
a double, deep nesting, UTF-16/32 bytes) goes to `json.loads`, which accepts it or raises its
usual error. The one text orjson accepts but reads differently is an integer beyond 64 bits,
which it makes a float; a text that may hold an integer literal of 19 or more digits is left to
the standard library too. Entry scripts' own results keep the standard library's output (Azure
ML's text, `NaN` included); `dumps_finite` is for values the host builds itself and has checked.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

try:
    import orjson
except ImportError:  # pragma: no cover - exercised where orjson is not installed
    orjson = None  # type: ignore[assignment]

HAVE_ORJSON = orjson is not None
stdlib_loads = json.loads

# Digits become b"d", everything else b" ": one C pass, then substring searches for long runs.
_DIGIT_MAP = bytes(ord("d") if 48 <= i <= 57 else ord(" ") for i in range(256))
_LONG_RUN = b"d" * 19
_MAX_RUNS_CHECKED = 64  # past that, let the standard library read it rather than loop here


def may_hold_long_integer(text: bytes) -> bool:
    """True if `text` may hold an integer literal of 19+ digits (a false alarm is only slower).

    A long run of digits in a fraction (`0.0010000000474974513`, common in float32 data), an
    exponent, or before a `.` or `e` is a float to both parsers and needs no fallback.
    """
    runs = text.translate(_DIGIT_MAP)
    start = runs.find(_LONG_RUN)
    checked = 0
    while start != -1:
        checked += 1
        if checked > _MAX_RUNS_CHECKED:
            return True
        end = runs.find(b" ", start)
        if end == -1:
            end = len(runs)
        before = text[start - 1 : start]
        if before == b"-" and text[start - 2 : start - 1] not in (b"e", b"E"):
            before = b""  # a sign, not an exponent's
        in_fraction_or_exponent = before in (b".", b"e", b"E", b"+", b"-")
        integer_part_of_float = text[end : end + 1] in (b".", b"e", b"E")
        if not in_fraction_or_exponent and not integer_part_of_float:
            return True
        start = runs.find(_LONG_RUN, end)
    return False


def loads(s: str | bytes | bytearray, *args: Any, **kwargs: Any) -> Any:
    """`json.loads`: the same values and errors, answered by orjson wherever that is safe."""
    if args or kwargs or orjson is None:
        return stdlib_loads(s, *args, **kwargs)
    if isinstance(s, str):
        try:
            data = s.encode("utf-8")
        except UnicodeEncodeError:  # lone surrogates: only the standard library takes them
            return stdlib_loads(s)
    elif isinstance(s, bytes | bytearray):
        data = bytes(s)
    else:
        return stdlib_loads(s)  # raises the standard library's TypeError
    if may_hold_long_integer(data):
        return stdlib_loads(s)
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return stdlib_loads(s)


def dumps_finite(value: Any) -> bytes:
    """Serialise plain JSON data (str keys, no NaN/Infinity: orjson would write null for those)."""
    if orjson is not None:
        try:
            return orjson.dumps(value)
        except TypeError:
            pass
    return json.dumps(value).encode()


def all_finite(array: np.ndarray) -> bool:
    """True unless a float array holds NaN or an infinity (which `dumps_finite` must not see)."""
    if array.dtype.kind not in "fc":
        return True
    return bool(np.isfinite(array).all())
