"""The entry script's `json.loads`, made fast without changing one answer.

Nearly every Azure ML entry script starts `run()` with `json.loads(raw_data)`, and for a request
of numbers that call is most of the script's CPU time (16 KB of floats: ~0.28 ms, against ~0.05
ms through `_json.loads`, which returns the standard library's values and raises its errors).
When a scoring process loads an entry script, `json.loads` is replaced by that parser in the
`json` module itself, so the script, its helper modules and `json.load` all get it, and a script
that patches or reloads `json` sees the module it expects. Names the script bound to the
original function (`from json import loads`) are pointed at it too. A `json.loads` someone else
already replaced is left alone. `MODELFLEET_SCRIPT_JSON=stdlib` turns the swap off.
"""

from __future__ import annotations

import functools
import json
import os
from types import ModuleType
from typing import Any

from . import _json

SWITCH = "MODELFLEET_SCRIPT_JSON"


def enabled() -> bool:
    return _json.HAVE_ORJSON and os.environ.get(SWITCH, "fast").strip().lower() != "stdlib"


@functools.wraps(_json.stdlib_loads)  # same name, docstring and signature for introspection
def fast_loads(s: Any, *args: Any, **kwargs: Any) -> Any:
    return _json.loads(s, *args, **kwargs)


def accelerate(module: ModuleType) -> bool:
    """Install the fast `json.loads` for `module`, a freshly imported entry script."""
    if not enabled():
        return False
    if json.loads is _json.stdlib_loads:
        json.loads = fast_loads
    elif json.loads is not fast_loads:
        return False  # replaced by someone else (the script itself, maybe): theirs stands
    for name, value in list(vars(module).items()):
        if value is _json.stdlib_loads:
            setattr(module, name, fast_loads)
    return True


def restore() -> None:
    """Put the standard library's `json.loads` back (for tests and embedding)."""
    if json.loads is fast_loads:
        json.loads = _json.stdlib_loads
