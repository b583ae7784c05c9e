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
import re
import sys
import threading
from typing import Any

import numpy as np

try:
    import orjson
except ImportError:  # pragma: no cover - exercised where orjson is not installed
    orjson = None  # type: ignore[assignment]

HAVE_ORJSON = orjson is not None
stdlib_loads = json.loads

# One C pass marks what matters: digits b"d", what can come right before or after a digit run
# inside a number (. e + -) as itself, openers ([ and {) as b"[", anything else b" ".
_MARKS = bytearray(b" " * 256)
_MARKS[ord("0") : ord("9") + 1] = b"d" * 10
for _char, _mark in ((".", "."), ("e", "e"), ("E", "e"), ("+", "+"), ("-", "-"), ("[", "["), ("{", "[")):
    _MARKS[ord(_char)] = ord(_mark)
_MARKS = bytes(_MARKS)
_LONG_RUN = b"d" * 19
_RUN_REST = re.compile(rb"d*")
_RUNS_LOOKED_AT_ONE_BY_ONE = 8
_ORJSON_MAX_DEPTH = 1024
_STACK_MARGIN = 64  # frames between here and the standard library's scanner, and then some


def _is_integer_part(marks: bytes, at: int, end: int) -> bool:
    """Whether the digit run marks[at:end] is an integer literal (not a fraction, an exponent
    or the integer part of a float)."""
    if at:
        before = marks[at - 1 : at]
        if before == b"-" and marks[at - 2 : at - 1] != b"e":
            before = b" "  # a sign, not an exponent's (or the text's first character)
        if before not in (b" ", b"["):
            return False
    return marks[end : end + 1] not in (b".", b"e")


def _long_integer_in(marks: bytes) -> bool:
    """True if `marks` (the text through _MARKS) may hold an integer of 19+ digits.

    A long run of digits in a fraction (`0.0010000000474974513`, common in float32 data) or an
    exponent is a float to both parsers; so is one followed by `.` or `e`. False alarms only
    cost speed: that text goes to the standard library.
    """
    at = marks.find(_LONG_RUN)
    if at == -1:
        return False
    for _ in range(_RUNS_LOOKED_AT_ONE_BY_ONE):  # the usual case: a few runs, all fractions
        end = _RUN_REST.match(marks, at).end()
        if _is_integer_part(marks, at, end):
            return True
        at = marks.find(_LONG_RUN, end)
        if at == -1:
            return False
    # Many long runs (float32 data of small values): every run at once, in numpy.
    return _integer_run_in(marks)


_D, _DOT, _E, _MINUS = (ord(char) for char in "d.e-")
_SEPARATORS = np.frombuffer(b" [", dtype=np.uint8)


def _integer_run_in(marks: bytes) -> bool:
    """`_long_integer_in` for texts with many long runs: a few array passes, not a search per
    run (a substring search for a separator and 19 digits crawls through digit-heavy text)."""
    array = np.frombuffer(marks, dtype=np.uint8)
    digits = np.concatenate(([False], array == _D, [False]))
    edges = np.flatnonzero(digits[1:] != digits[:-1])
    starts, ends = edges[::2], edges[1::2]  # each run is array[start:end]
    long = (ends - starts) >= len(_LONG_RUN)
    starts, ends = starts[long], ends[long]
    padded = np.concatenate(([ord(" ")], array, [ord(" ")]))
    before, after = padded[starts], padded[ends + 1]  # padded[i + 1] is array[i]
    # A sign, not an exponent's: the mark before it stands for the run's separator.
    signed = before == _MINUS
    before = np.where(signed & (padded[np.maximum(starts - 1, 0)] != _E), ord(" "), before)
    integer = np.isin(before, _SEPARATORS) & (after != _DOT) & (after != _E)
    return bool(integer.any())


def _stack_depth() -> int:
    depth, frame = 0, sys._getframe(1)
    while frame is not None:
        depth, frame = depth + 1, frame.f_back
    return depth


def _deepest_nesting(data: bytes) -> int:
    """How deep `data` nests, counting only brackets outside strings; huge when unsure."""
    if b"\\" in data:
        return sys.maxsize  # an escaped quote would fool the split below
    outside_strings = np.frombuffer(b"".join(data.split(b'"')[::2]), dtype=np.uint8)
    opens = (outside_strings == ord("[")) | (outside_strings == ord("{"))
    closes = (outside_strings == ord("]")) | (outside_strings == ord("}"))
    steps = opens.astype(np.int32) - closes
    return int(np.cumsum(steps).max()) if steps.size else 0


def _nesting_fits(data: bytes, marks: bytes) -> bool:
    """False where the standard library would run out of stack but orjson would not.

    The standard library raises RecursionError past the stack the caller has left, orjson only
    past 1024 levels: a document in between must get the standard library's error.
    """
    room = sys.getrecursionlimit() - _stack_depth() - _STACK_MARGIN
    if room > _ORJSON_MAX_DEPTH:
        return True
    if marks.count(b"[") < room:  # it cannot nest deeper than it has openers
        return True
    return _deepest_nesting(data) < room


class _KnownText(threading.local):
    """The text of a body the host decoded itself, with the bytes it came from: the script's
    `json.loads` of that very text then reads those bytes instead of encoding it again."""

    text: str | None = None
    data: bytes = b""


_known = _KnownText()


def known_utf8(text: str, data: bytes) -> None:
    """`text` is exactly `data` decoded as UTF-8 (until `forget_utf8()`, on this thread)."""
    _known.text = text
    _known.data = data


def forget_utf8() -> None:
    _known.text = None
    _known.data = b""


def loads(s: str | bytes | bytearray, *args: Any, **kwargs: Any) -> Any:
    """`json.loads`: the same values and errors, answered by orjson wherever that is safe."""
    if args or kwargs or orjson is None:
        return stdlib_loads(s, *args, **kwargs)
    kind = type(s)  # exact types: a subclass may override encode() or __bytes__
    if kind is str:
        if s is _known.text:
            data = _known.data
        else:
            try:
                data = s.encode("utf-8")  # type: ignore[union-attr]
            except UnicodeEncodeError:  # lone surrogates: only the standard library takes them
                return stdlib_loads(s)
    elif kind is bytes:
        data = s  # type: ignore[assignment]
    elif kind is bytearray:
        data = bytes(s)
    else:
        return stdlib_loads(s)  # other types: the standard library's answer or TypeError
    marks = data.translate(_MARKS)
    if _long_integer_in(marks) or not _nesting_fits(data, marks):
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
