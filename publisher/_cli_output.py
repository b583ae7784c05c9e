"""How the publisher's commands print: plain tables for people, JSON for scripts.

Shared by `publisher.cli` and `publisher._deploy_cli`, which is why it is a module of its own:
the deploy commands must not import the module that dispatches to them.
"""

from __future__ import annotations

import json
from typing import Any


def table(rows: list[list[str]], headers: list[str]) -> str:
    """Columns padded to their widest cell, headers upper-cased, no trailing blanks."""
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows, strict=False)]
    lines = ["  ".join(h.upper().ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    lines += ["  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    return "\n".join(lines)


def print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, sort_keys=False))


def size(n: int) -> str:
    """Bytes as people read them: 512 B, 3.4 MiB."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"
