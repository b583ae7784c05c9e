"""Module logs: each instance writes its output into a file of its own, and the agent moves it
into a size-rotated log per module.

An instance's stdout and stderr are a file it holds open itself (`InstanceOutput`), never a pipe
to the agent: after the agent is killed, a `print()` in `run()` still succeeds, and the lines
wait in the file until the next agent collects them. The agent collects complete lines into
the module's rotating log (so `logs(module)` shows one story across the old and the new version
of a switch) and truncates the instance's file behind it, off the event loop. A line written in
the instant between a collection's read and its truncation can be lost; nothing else is.
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


class InstanceOutput:
    """One instance's output file and the agent's collection of it."""

    def __init__(self, path: Path, log: RotatingLog, recent: collections.deque[str]) -> None:
        self.path = path
        self.log = log
        self.recent = recent
        self._partial = b""  # an unfinished last line, held until its newline arrives

    def open_for_child(self) -> int:
        """The fd the child gets as stdout and stderr (append-only: truncation behind it is safe)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        return os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)

    def collect(self) -> None:
        """Move what the instance wrote since the last collection into the module log."""
        try:
            with open(self.path, "r+b") as handle:
                data = handle.read()
                if data:
                    handle.truncate(0)
        except FileNotFoundError:
            return
        except OSError:
            return  # a full or failing disk must not stop the module, only its log
        data = self._partial + data
        cut = data.rfind(b"\n")
        if cut < 0 and len(data) < _MAX_LINE:
            self._partial = data
            return
        complete, self._partial = (data[: cut + 1], data[cut + 1 :]) if cut >= 0 else (data + b"\n", b"")
        _emit(complete, self.log, self.recent)

    def finish(self) -> None:
        """The instance is gone: the last lines, then its file."""
        self.collect()
        if self._partial:
            _emit(self._partial + b"\n", self.log, self.recent)
            self._partial = b""
        with contextlib.suppress(OSError):
            self.path.unlink()

    async def run(self, period_s: float) -> None:
        """Collect every `period_s` until cancelled."""
        while True:
            await asyncio.to_thread(self.collect)
            await asyncio.sleep(period_s)


def _emit(data: bytes, log: RotatingLog, recent: collections.deque[str]) -> None:
    with contextlib.suppress(OSError):  # a full disk must not stop the module, only its log
        log.write(data)
    recent.extend(data.decode("utf-8", errors="replace").splitlines())
