"""Module logs: the children's output copied from their pipe into a size-rotated file per module.

Every instance of a module (old and new version side by side during a switch) writes into the
same file, so `logs(module)` shows one story. The file is written from the event loop in small
appends, as the logging module would; reading a tail never loads a whole file.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

DEFAULT_MAX_BYTES = 5 * 1024 * 1024
DEFAULT_BACKUPS = 3
# A line longer than this is written in pieces rather than held in memory without bound.
_MAX_LINE = 64 * 1024
_READ_CHUNK = 64 * 1024


class RotatingLog:
    """`<name>.log` plus at most `backups` older files `<name>.log.1` (newest) .. `.log.N`."""

    def __init__(self, path: Path, *, max_bytes: int = DEFAULT_MAX_BYTES, backups: int = DEFAULT_BACKUPS):
        if max_bytes <= 0 or backups < 0:
            raise ValueError("max_bytes must be positive and backups not negative")
        self.path = path
        self.max_bytes = max_bytes
        self.backups = backups
        self._file: BinaryIO | None = None
        self._size = 0

    def _open(self) -> BinaryIO:
        if self._file is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(self.path, "ab")  # noqa: SIM115 - kept open across writes
            self._size = self._file.tell()
        return self._file

    def write(self, data: bytes) -> None:
        """Append whole lines; rotate first when they would push the file past max_bytes."""
        if not data:
            return
        handle = self._open()
        if self._size and self._size + len(data) > self.max_bytes:
            self._rotate()
            handle = self._open()
        handle.write(data)
        handle.flush()
        self._size += len(data)

    def _rotate(self) -> None:
        self.close()
        if self.backups == 0:
            self.path.unlink(missing_ok=True)
            return
        for index in range(self.backups, 0, -1):
            source = self.path if index == 1 else self._backup(index - 1)
            if source.exists():
                os.replace(source, self._backup(index))

    def _backup(self, index: int) -> Path:
        return self.path.with_name(f"{self.path.name}.{index}")

    def files(self) -> list[Path]:
        """Newest first: the current file, then .1, .2, ... as far as they exist."""
        found = [self.path] if self.path.exists() else []
        found.extend(p for p in (self._backup(i) for i in range(1, self.backups + 1)) if p.exists())
        return found

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
            self._size = 0


def _reverse_lines(path: Path) -> Iterator[bytes]:
    """The file's lines, last first, reading fixed-size blocks from the end."""
    try:
        handle = open(path, "rb")  # noqa: SIM115 - closed in finally; a generator cannot use with cleanly
    except FileNotFoundError:
        return
    try:
        position = handle.seek(0, os.SEEK_END)
        remainder = b""
        while position > 0:
            step = min(_READ_CHUNK, position)
            position -= step
            handle.seek(position)
            block = handle.read(step) + remainder
            lines = block.split(b"\n")
            remainder = lines.pop(0)
            yield from reversed(lines)
        yield remainder
    finally:
        handle.close()


def tail_lines(files: list[Path], count: int) -> list[str]:
    """The last `count` lines over rotated files (given newest first), oldest line first."""
    if count <= 0:
        return []
    collected: collections.deque[str] = collections.deque()
    for path in files:
        first = True
        for raw in _reverse_lines(path):
            # A file ends with a newline: the empty piece after it is not a line.
            if first and raw == b"":
                first = False
                continue
            first = False
            collected.appendleft(raw.decode("utf-8", errors="replace"))
            if len(collected) >= count:
                return list(collected)
    return list(collected)


async def pump(reader: asyncio.StreamReader, log: RotatingLog, recent: collections.deque[str]) -> None:
    """Copy a child's output into its module log until EOF, keeping the last lines in `recent`.

    Only complete lines go to the file so two instances writing at once never split each
    other's lines; `recent` is what a start failure quotes without re-reading the file.
    """
    pending = b""
    while True:
        chunk = await reader.read(_READ_CHUNK)
        if not chunk:
            break
        pending += chunk
        cut = pending.rfind(b"\n")
        if cut < 0 and len(pending) < _MAX_LINE:
            continue
        complete, pending = (pending[: cut + 1], pending[cut + 1 :]) if cut >= 0 else (pending + b"\n", b"")
        _emit(complete, log, recent)
    if pending:
        _emit(pending + b"\n", log, recent)


def _emit(data: bytes, log: RotatingLog, recent: collections.deque[str]) -> None:
    with contextlib.suppress(OSError):  # a full disk must not stop the module, only its log
        log.write(data)
    recent.extend(data.decode("utf-8", errors="replace").splitlines())
