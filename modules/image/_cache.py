"""A content-addressed cache of blobs and built layers on this machine.

Layers are expensive to make (the runtime layer gzips ~150 MB; the base image runs debootstrap)
and their inputs are known exactly, so each is stored under a key made from its inputs and made
once per machine: a CI runner builds the base image once, not once per pipeline.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from modules.image._layer import Layer


def default_cache_dir() -> Path:
    """`MODELFLEET_CACHE_DIR`, else `$XDG_CACHE_HOME/modelfleet/images`, else `~/.cache/...`."""
    explicit = os.environ.get("MODELFLEET_CACHE_DIR")
    if explicit:
        return Path(explicit) / "images"
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "modelfleet" / "images"


def cache_key(*parts: Any) -> str:
    """A key from JSON-able parts; order matters."""
    raw = json.dumps(parts, sort_keys=True, separators=(",", ":"), default=str).encode()
    return hashlib.sha256(raw).hexdigest()


class ImageCache:
    """`blobs/sha256/<hex>` holds blobs; `layers/<key>.json` says which blob a key built."""

    def __init__(self, root: Path | None = None) -> None:
        self.root = root or default_cache_dir()

    def blob_path(self, digest: str) -> Path:
        algorithm, _, hexdigest = digest.partition(":")
        return self.root / "blobs" / algorithm / hexdigest

    def has_blob(self, digest: str, size: int | None = None) -> bool:
        path = self.blob_path(digest)
        return path.is_file() and (size is None or path.stat().st_size == size)

    def staging(self, name: str) -> Path:
        """A path to write a new layer to before its digest is known."""
        path = self.root / "staging" / f"{name}.{os.getpid()}.tar.gz"
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def adopt(self, layer: Layer) -> Layer:
        """Move a freshly written layer into the blob store under its digest."""
        dest = self.blob_path(layer.digest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.replace(layer.path, dest)
        return Layer(dest, layer.digest, layer.diff_id, layer.size, layer.comment, layer.media_type)

    def get_layer(self, key: str) -> Layer | None:
        record = self.root / "layers" / f"{key}.json"
        try:
            data = json.loads(record.read_text())
        except (OSError, ValueError):
            return None
        layer = Layer(
            path=self.blob_path(data["digest"]),
            digest=data["digest"],
            diff_id=data["diff_id"],
            size=data["size"],
            comment=data["comment"],
            media_type=data.get("media_type", Layer.media_type),
        )
        return layer if self.has_blob(layer.digest, layer.size) else None

    def put_layer(self, key: str, layer: Layer) -> Layer:
        layer = self.adopt(layer) if layer.path != self.blob_path(layer.digest) else layer
        record = self.root / "layers" / f"{key}.json"
        record.parent.mkdir(parents=True, exist_ok=True)
        data = {k: getattr(layer, k) for k in ("digest", "diff_id", "size", "comment", "media_type")}
        tmp = record.with_name(record.name + f".{os.getpid()}")
        tmp.write_text(json.dumps(data))
        os.replace(tmp, record)
        return layer

    def get_json(self, kind: str, key: str) -> Any | None:
        try:
            return json.loads((self.root / kind / f"{key}.json").read_text())
        except (OSError, ValueError):
            return None

    def put_json(self, kind: str, key: str, value: Any) -> None:
        path = self.root / kind / f"{key}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + f".{os.getpid()}")
        tmp.write_text(json.dumps(value))
        os.replace(tmp, path)

    @contextlib.contextmanager
    def lock(self, key: str) -> Iterator[None]:
        """One builder per key on this machine (two test sessions, two CI jobs)."""
        path = self.root / "locks" / f"{key}.lock"
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a") as f:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f.fileno(), fcntl.LOCK_UN)
