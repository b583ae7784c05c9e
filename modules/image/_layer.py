"""Reproducible image layers: the same files give the same bytes, hence the same digest.

Entries are written in path order with owners and times fixed and a gzip header without a time,
as ko, jib and apko do; a layer is streamed to disk (models can be gigabytes) while both digests
are computed: the blob's (what the registry stores) and the uncompressed tar's (the `diff_id`
the image config lists).
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import os
import stat
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, Any

from modules.image._layout import OCI_LAYER_GZIP

COMPRESS_LEVEL = 6
_CHUNK = 1 << 20


@dataclass(frozen=True)
class Layer:
    """One layer blob on this machine: where it is, what it is, and what made it (`comment`,
    the image history's `created_by`)."""

    path: Path
    digest: str
    diff_id: str
    size: int
    comment: str
    media_type: str = OCI_LAYER_GZIP

    def descriptor(self) -> dict[str, Any]:
        return {"mediaType": self.media_type, "digest": self.digest, "size": self.size}


class _Hashing(io.RawIOBase):
    """A write-only stream that hashes and counts what passes through to `sink`."""

    def __init__(self, sink: IO[bytes] | Any) -> None:
        self.sink = sink
        self.hash = hashlib.sha256()
        self.count = 0

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        view = memoryview(data)
        self.hash.update(view)
        self.count += len(view)
        self.sink.write(view)
        return len(view)


@dataclass(frozen=True)
class _Entry:
    path: str
    kind: str  # "dir" | "file" | "data" | "symlink"
    mode: int
    source: Path | None = None
    data: bytes = b""
    target: str = ""


class LayerWriter:
    """Collect entries, then `write(dest)` them as one sorted, normalized tar.gz.

    Parent folders are added as needed (0755, root). Paths are relative to `/` inside the image.
    """

    def __init__(self) -> None:
        self._entries: dict[str, _Entry] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def _put(self, entry: _Entry) -> None:
        path = PurePosixPath(entry.path.lstrip("/"))
        if not path.parts or ".." in path.parts:
            raise ValueError(f"not a path inside the image: {entry.path!r}")
        for parent in list(path.parents)[:-1]:
            self._entries.setdefault(str(parent), _Entry(str(parent), "dir", 0o755))
        self._entries[str(path)] = _Entry(
            str(path), entry.kind, entry.mode, entry.source, entry.data, entry.target
        )

    def add_dir(self, path: str | PurePosixPath, mode: int = 0o755) -> None:
        self._put(_Entry(str(path), "dir", mode))

    def add_bytes(self, path: str | PurePosixPath, data: bytes, *, executable: bool = False) -> None:
        self._put(_Entry(str(path), "data", 0o755 if executable else 0o644, data=data))

    def add_file(self, path: str | PurePosixPath, source: Path, *, executable: bool | None = None) -> None:
        """A file from this machine; executable keeps the source's owner-exec bit unless given."""
        if executable is None:
            executable = bool(source.stat().st_mode & stat.S_IXUSR)
        self._put(_Entry(str(path), "file", 0o755 if executable else 0o644, source=source))

    def add_symlink(self, path: str | PurePosixPath, target: str) -> None:
        self._put(_Entry(str(path), "symlink", 0o777, target=target))

    def add_tree(self, root: Path, prefix: str | PurePosixPath) -> None:
        """Every regular file and folder under `root` (links kept as links), below `prefix`."""
        for current, dirs, files in os.walk(root):
            dirs.sort()
            here = Path(current)
            rel = here.relative_to(root)
            base = PurePosixPath(prefix) / rel.as_posix() if rel.parts else PurePosixPath(prefix)
            if rel.parts:
                self.add_dir(base)
            for name in sorted(files + [d for d in dirs if (here / d).is_symlink()]):
                full = here / name
                if full.is_symlink():
                    self.add_symlink(base / name, os.readlink(full))
                elif full.is_file():
                    self.add_file(base / name, full)

    def write(self, dest: Path, comment: str) -> Layer:
        """Write the layer to `dest` (via a temporary name, renamed when complete)."""

        def fill(tar: tarfile.TarFile) -> None:
            for path in sorted(self._entries):
                _add(tar, self._entries[path])

        return _write_layer(dest, comment, fill)


def _write_layer(dest: Path, comment: str, fill: Callable[[tarfile.TarFile], None]) -> Layer:
    """A gzip-compressed tar at `dest`, its blob digest and its diff id computed as it is written:
    through a temporary name, fsynced, renamed when complete; no time in the gzip header."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    partial = dest.with_name(dest.name + f".{os.getpid()}.partial")
    try:
        with partial.open("wb") as out:
            blob = _Hashing(out)
            with gzip.GzipFile(
                filename="", mode="wb", fileobj=blob, mtime=0, compresslevel=COMPRESS_LEVEL
            ) as gz:
                raw = _Hashing(gz)
                with tarfile.open(fileobj=raw, mode="w|", format=tarfile.PAX_FORMAT) as tar:
                    fill(tar)
            out.flush()
            os.fsync(out.fileno())
        os.replace(partial, dest)
    finally:
        with contextlib.suppress(FileNotFoundError):
            partial.unlink()
    return Layer(
        path=dest,
        digest="sha256:" + blob.hash.hexdigest(),
        diff_id="sha256:" + raw.hash.hexdigest(),
        size=blob.count,
        comment=comment,
    )


def _info(entry: _Entry) -> tarfile.TarInfo:
    info = tarfile.TarInfo(entry.path)
    info.mode = entry.mode
    info.mtime = 0
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def _add(tar: tarfile.TarFile, entry: _Entry) -> None:
    info = _info(entry)
    if entry.kind == "dir":
        info.type = tarfile.DIRTYPE
        tar.addfile(info)
    elif entry.kind == "symlink":
        info.type = tarfile.SYMTYPE
        info.linkname = entry.target
        tar.addfile(info)
    elif entry.kind == "data":
        info.size = len(entry.data)
        tar.addfile(info, io.BytesIO(entry.data))
    else:
        assert entry.source is not None
        with entry.source.open("rb") as f:
            info.size = os.fstat(f.fileno()).st_size
            tar.addfile(info, f)


def write_rootfs_layer(root: Path, dest: Path, comment: str) -> Layer:
    """A whole root file system as one layer, for the base image.

    Unlike module layers it keeps owners (numeric), modes, times and hard links as they are on disk:
    a system needs its setuid bits and group-owned files, and Python's `.pyc` files are checked
    against their sources' times. Entries are still sorted and the gzip header has no time.
    """

    def fill(tar: tarfile.TarFile) -> None:
        for path, arcname in _walk_sorted(root):
            info = tar.gettarinfo(str(path), arcname)
            if info is None:  # sockets and the like: nothing a container needs
                continue
            info.uname = info.gname = ""
            if info.isreg():
                with path.open("rb") as f:
                    tar.addfile(info, f)
            else:
                tar.addfile(info)

    return _write_layer(dest, comment, fill)


def _walk_sorted(root: Path) -> Iterator[tuple[Path, str]]:
    for current, dirs, files in os.walk(root):
        dirs.sort()
        here = Path(current)
        rel = here.relative_to(root)
        if rel.parts:
            yield here, rel.as_posix()
        for name in sorted(files + [d for d in dirs if (here / d).is_symlink()]):
            yield here / name, (rel / name).as_posix()
        dirs[:] = [d for d in dirs if not (here / d).is_symlink()]


def unpacked_size(layer: Layer) -> int:
    """Bytes of the uncompressed tar (what the layer takes on a device's disk, roughly)."""
    total = 0
    with gzip.open(layer.path, "rb") as f:
        while chunk := f.read(_CHUNK):
            total += len(chunk)
    return total
