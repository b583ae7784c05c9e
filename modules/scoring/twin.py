"""A module's twin, as its entry script sees it: desired properties in, reported properties out.

The agent gives each module a folder of its own and names it in `MODELFLEET_TWIN_DIR`:

- `desired.json`: the module twin's desired properties from the effective deployment (base and
  layers merged), as a JSON object. The agent replaces it atomically whenever they change, with
  no restart; `desired()` notices the new file on its next call (a `stat` per call, a read and a
  parse only when the file changed).
- `reported.json`: what the module reports (`report(**properties)`), a JSON object of at most
  `REPORTED_MAX_BYTES`. The agent reads it on every heartbeat and reconcile pass and reports it
  as the module's `reported_properties` in the device's reported state (`status --json`).

In an entry script::

    from modules.scoring.twin import desired, report

    def run(raw_data):
        threshold = desired().get("threshold", 0.5)   # the latest desired properties
        report(threshold_in_use=threshold)              # written only when it changes
        ...

Without `MODELFLEET_TWIN_DIR` (a script run outside an agent, e.g. `modelfleet serve`) `desired()`
is `{}` and `report()` does nothing; point the variable at a folder to try a twin locally.

The agent side of the same files is `write_desired` and `read_reported`.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import stat
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from modules.atomic_file import write_atomic
from modules.safe_json import PayloadRefused, loads_limited

TWIN_DIR_ENV = "MODELFLEET_TWIN_DIR"
DESIRED_FILE = "desired.json"
REPORTED_FILE = "reported.json"
REPORTED_MAX_BYTES = 32 * 1024
"""The largest `reported.json` the agent takes into the reported state; `report()` refuses more."""
_LOCK_FILE = ".reported.lock"

_lock = threading.Lock()
_desired_cache: tuple[Path, tuple[int, int, int], bytes, dict[str, Any]] | None = None
_RACY_NS = 2_000_000_000


def twin_dir() -> Path | None:
    """This module's twin folder, or None outside an agent."""
    value = os.environ.get(TWIN_DIR_ENV)
    return Path(value) if value else None


def _file_key(st: os.stat_result) -> tuple[int, int, int]:
    # each atomic replace is a new inode; mtime and size tell apart a reused one
    return st.st_ino, st.st_mtime_ns, st.st_size


def desired() -> dict[str, Any]:
    """The twin's desired properties as they are now (a copy the caller may change); `{}` when
    there are none. Cheap enough to call on every request."""
    global _desired_cache
    folder = twin_dir()
    if folder is None:
        return {}
    path = folder / DESIRED_FILE
    try:
        st = os.stat(path)
    except OSError:
        return {}
    key = _file_key(st)
    # A file changed within the file system's timestamp granularity could carry the same key as
    # the one before (a reused inode, the same size): read it until it is older than that.
    racy = time.time_ns() - st.st_mtime_ns < _RACY_NS
    with _lock:
        cached = _desired_cache
        if cached is None or cached[0] != path or cached[1] != key or racy:
            try:
                with open(path, "rb") as fh:
                    key = _file_key(os.fstat(fh.fileno()))
                    raw = fh.read()
                if cached is not None and cached[0] == path and cached[2] == raw:
                    value = cached[3]
                else:
                    parsed = json.loads(raw)
                    value = parsed if isinstance(parsed, dict) else {}
            except (OSError, ValueError):
                return {}
            cached = (path, key, raw, value)
            _desired_cache = cached
        return copy.deepcopy(cached[3])


def report(properties: Mapping[str, Any] | None = None, /, **more: Any) -> None:
    """Merge properties into this module's reported properties, as a twin patch does: a `None`
    value removes that property. Written (atomically) only when something changed, so calling it
    on every request with the same values costs a read. `ValueError` when the result is not JSON
    or is larger than `REPORTED_MAX_BYTES`. Safe across the scoring host's worker processes."""
    folder = twin_dir()
    if folder is None:
        return
    patch = {**(properties or {}), **more}
    path = folder / REPORTED_FILE
    with _lock, _locked(folder):
        current = _read_own(path)
        merged = dict(current)
        for name, value in patch.items():
            if value is None:
                merged.pop(name, None)
            else:
                merged[name] = value
        if merged == current and path.exists():
            return
        try:
            data = json.dumps(merged, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()
        except TypeError as exc:
            raise ValueError(f"reported properties must be JSON: {exc}") from None
        if len(data) > REPORTED_MAX_BYTES:
            raise ValueError(
                f"reported properties of {len(data)} bytes are above the limit of {REPORTED_MAX_BYTES}"
            )
        write_atomic(path, data)


@contextlib.contextmanager
def _locked(folder: Path) -> Iterator[None]:
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    fd = os.open(folder / _LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _read_own(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


# -- the agent's side ------------------------------------------------------------------------


def write_desired(folder: Path, properties: Mapping[str, Any]) -> bool:
    """Make `folder/desired.json` hold `properties` (creating the folder); True when the file was
    written, False when it already held them (no new file, so a module sees no change)."""
    if folder.is_symlink():
        folder.unlink()  # the folder is the agent's: a module does not get to redirect it
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    data = json.dumps(dict(properties), separators=(",", ":"), ensure_ascii=False).encode()
    path = folder / DESIRED_FILE
    with contextlib.suppress(OSError):
        if _read_regular(path, len(data) + 1) == data:
            return False
    write_atomic(path, data, mode=0o600)
    return True


class ReportedRefused(ValueError):
    """A `reported.json` the agent will not report; the message says why."""


def reported_key(folder: Path) -> tuple[int, int, int] | None:
    """What identifies the current `reported.json` (None: there is none), to skip re-reading it."""
    try:
        return _file_key(os.lstat(folder / REPORTED_FILE))
    except OSError:
        return None


def read_reported(folder: Path) -> dict[str, Any] | None:
    """The module's reported properties; None when it reported none. `ReportedRefused` for a file
    that is not a regular file, is larger than `REPORTED_MAX_BYTES`, or is not a JSON object."""
    try:
        data = _read_regular(folder / REPORTED_FILE, REPORTED_MAX_BYTES)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ReportedRefused(f"cannot read {REPORTED_FILE}: {exc.strerror or exc}") from None
    try:
        value = loads_limited(data, max_bytes=REPORTED_MAX_BYTES)
    except PayloadRefused as exc:
        raise ReportedRefused(f"{REPORTED_FILE}: {exc}") from None
    if not isinstance(value, dict):
        raise ReportedRefused(f"{REPORTED_FILE} is not a JSON object")
    return value


def _read_regular(path: Path, limit: int) -> bytes:
    """At most `limit` bytes of a regular file, never through a symbolic link."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise OSError(0, "not a regular file")
        if st.st_size > limit:
            raise OSError(0, f"{st.st_size} bytes is above the limit of {limit}")
        with os.fdopen(fd, "rb", closefd=False) as fh:
            return fh.read(limit + 1)
    finally:
        os.close(fd)
