"""Files that are either wholly old or wholly new, even across a crash or a power cut.

The registry layout, the OCI client's downloads, the device's artifact store and the publisher's
key files all replace files that a reader may open at any moment; one helper keeps the recipe
(write beside, fsync, rename over, fsync the folder) from drifting between them.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

TEMP_PREFIX = ".tmp-"
"""Temporary files start with this, in the target's own folder (a rename never crosses disks)."""


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """Make a rename inside `path` durable.

    Some filesystems refuse to open or fsync a directory; the rename itself has happened then,
    so that is not an error worth failing a write for.
    """
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_atomic(path: str | os.PathLike[str], data: bytes, *, mode: int | None = None) -> None:
    """Replace `path` with `data`: readers see the old content or all of the new, never a part.

    The folder must exist. `mode` sets the new file's permission bits (0o600 for secrets and
    private stores); without it the file gets the usual `0o666` less the umask, like `open`.
    A failure removes the temporary file and leaves `path` as it was.
    """
    target = Path(path)
    tmp = target.with_name(f"{TEMP_PREFIX}{target.name}-{os.urandom(4).hex()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666 if mode is None else mode)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(target.parent)
