"""On-disk storage of the embedded registry: one OCI image layout per repository.

Keeping each repository a plain OCI image layout means the data directory is itself portable: tools
that read `oci:DIR:TAG` (skopeo, oras, umoci) can read `ROOT/repos/<repository>` directly, and
nothing but the filesystem is needed to back it up.

Crash safety comes from never modifying a file in place: every write goes to a temporary file in
the destination directory, is fsynced, and is moved over the target with `os.replace`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import re
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from modules.atomic_file import fsync_dir, write_atomic

REF_NAME = "org.opencontainers.image.ref.name"
OCI_LAYOUT = {"imageLayoutVersion": "1.0.0"}
OCI_INDEX = "application/vnd.oci.image.index.v1+json"

DIGEST_RE = re.compile(r"^sha256:[a-f0-9]{64}$")
_UPLOAD_ID_RE = re.compile(r"^[a-f0-9]{32}$")
# Batch small network chunks before handing them to a thread: one hop per MiB, not per 64 KiB.
_WRITE_BATCH = 1 << 20
_READ_CHUNK = 1 << 20


class DigestMismatch(Exception):
    """The uploaded bytes do not hash to the digest the client announced."""


class RangeMismatch(Exception):
    """A chunk that does not start where the upload currently ends."""

    def __init__(self, offset: int) -> None:
        super().__init__(f"upload is at offset {offset}")
        self.offset = offset


class UnknownUpload(Exception):
    """No upload session with that id (finished, cancelled, or never opened)."""


class Descriptor(BaseModel):
    """An entry of index.json; unknown fields (platform, artifactType) are kept as they were."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)

    media_type: str = Field(alias="mediaType")
    digest: str
    size: int
    annotations: dict[str, str] | None = None

    @property
    def tag(self) -> str | None:
        return (self.annotations or {}).get(REF_NAME)


class ImageIndex(BaseModel):
    """index.json of one repository: its tags and untagged manifests."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)

    schema_version: int = Field(default=2, alias="schemaVersion")
    media_type: str = Field(default=OCI_INDEX, alias="mediaType")
    manifests: list[Descriptor] = Field(default_factory=list)


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def atomic_write(path: Path, data: bytes) -> None:
    """The layout's files are the registry's private store: owner-only, as they always were."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, data, mode=0o600)


class _Upload:
    """An open upload: the running hash spares re-reading the whole file when it is finished."""

    def __init__(self, repository: str, path: Path) -> None:
        self.repository = repository
        self.path = path
        self.hasher = hashlib.sha256()
        self.size = 0
        self.lock = asyncio.Lock()


class Layout:
    """All repositories and upload sessions under one root directory."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.repos_dir = self.root / "repos"
        self.uploads_dir = self.root / "uploads"
        self._index_locks: dict[str, asyncio.Lock] = {}
        self._uploads: dict[str, _Upload] = {}

    def prepare(self) -> None:
        """Create the directories and prove they are writable, so a bad data dir fails at start.

        Upload sessions from a previous run are dropped: their running hashes died with it and
        clients restart interrupted uploads anyway.
        """
        self.repos_dir.mkdir(parents=True, exist_ok=True)
        if self.uploads_dir.exists():
            shutil.rmtree(self.uploads_dir, ignore_errors=True)
        self.uploads_dir.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=self.root, prefix=".probe-")
        os.close(fd)
        os.unlink(probe)

    # -- repositories -------------------------------------------------------------------------

    def repo_dir(self, repository: str) -> Path:
        return self.repos_dir / repository

    def repo_exists(self, repository: str) -> bool:
        return (self.repo_dir(repository) / "oci-layout").is_file()

    def _ensure_repo(self, repository: str) -> Path:
        repo = self.repo_dir(repository)
        if not (repo / "oci-layout").is_file():
            (repo / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
            if not (repo / "index.json").is_file():
                atomic_write(repo / "index.json", self._dump_index(ImageIndex()))
            atomic_write(repo / "oci-layout", json.dumps(OCI_LAYOUT).encode())
        return repo

    def repositories(self) -> list[str]:
        names = [
            marker.parent.relative_to(self.repos_dir).as_posix()
            for marker in self.repos_dir.rglob("oci-layout")
            if "blobs" not in marker.parent.relative_to(self.repos_dir).parts
        ]
        return sorted(names)

    # -- blobs --------------------------------------------------------------------------------

    def blob_path(self, repository: str, digest: str) -> Path:
        return self.repo_dir(repository) / "blobs" / "sha256" / digest.removeprefix("sha256:")

    def blob_size(self, repository: str, digest: str) -> int | None:
        try:
            return self.blob_path(repository, digest).stat().st_size
        except FileNotFoundError:
            return None

    def delete_blob(self, repository: str, digest: str) -> bool:
        try:
            self.blob_path(repository, digest).unlink()
        except FileNotFoundError:
            return False
        return True

    async def read_blob(self, repository: str, digest: str, start: int, length: int) -> AsyncIterator[bytes]:
        """Stream a byte range from a worker thread, so a slow disk never stalls other requests."""
        fh = await asyncio.to_thread(open, self.blob_path(repository, digest), "rb")
        try:
            await asyncio.to_thread(fh.seek, start)
            remaining = length
            while remaining > 0:
                chunk = await asyncio.to_thread(fh.read, min(_READ_CHUNK, remaining))
                if not chunk:
                    break
                remaining -= len(chunk)
                yield chunk
        finally:
            await asyncio.to_thread(fh.close)

    def _mount_sync(self, source: Path, target: Path) -> None:
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.exists():
            return
        tmp = target.parent / f".tmp-mount-{uuid.uuid4().hex}"
        try:
            try:
                os.link(source, tmp)
            except OSError:
                # Hard links fail across filesystems and on some FUSE mounts; a copy is correct,
                # only bigger.
                shutil.copyfile(source, tmp)
                with open(tmp, "rb+") as fh:
                    os.fsync(fh.fileno())
            os.replace(tmp, target)
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        fsync_dir(target.parent)

    async def mount_blob(self, repository: str, source_repository: str, digest: str) -> bool:
        source = self.blob_path(source_repository, digest)
        if not source.is_file():
            return False
        self._ensure_repo(repository)
        await asyncio.to_thread(self._mount_sync, source, self.blob_path(repository, digest))
        return True

    # -- uploads ------------------------------------------------------------------------------

    def new_upload(self, repository: str) -> str:
        upload_id = uuid.uuid4().hex
        path = self.uploads_dir / upload_id
        path.touch()
        self._uploads[upload_id] = _Upload(repository, path)
        return upload_id

    def upload(self, repository: str, upload_id: str) -> _Upload:
        upload = self._uploads.get(upload_id) if _UPLOAD_ID_RE.match(upload_id) else None
        if upload is None or upload.repository != repository:
            raise UnknownUpload(upload_id)
        return upload

    async def append_upload(
        self,
        repository: str,
        upload_id: str,
        chunks: AsyncIterator[bytes],
        start: int | None = None,
    ) -> int:
        """Append a request body as it arrives; `start` is the client's Content-Range offset."""
        upload = self.upload(repository, upload_id)
        async with upload.lock:
            if start is not None and start != upload.size:
                raise RangeMismatch(upload.size)
            fh = await asyncio.to_thread(open, upload.path, "ab")
            try:
                pending: list[bytes] = []
                pending_size = 0
                async for chunk in chunks:
                    pending.append(chunk)
                    pending_size += len(chunk)
                    if pending_size >= _WRITE_BATCH:
                        await asyncio.to_thread(self._write, fh, upload, pending)
                        pending, pending_size = [], 0
                if pending:
                    await asyncio.to_thread(self._write, fh, upload, pending)
            finally:
                await asyncio.to_thread(fh.close)
            return upload.size

    @staticmethod
    def _write(fh: Any, upload: _Upload, chunks: list[bytes]) -> None:
        for chunk in chunks:
            fh.write(chunk)
            upload.hasher.update(chunk)
            upload.size += len(chunk)

    def cancel_upload(self, repository: str, upload_id: str) -> None:
        upload = self.upload(repository, upload_id)
        del self._uploads[upload_id]
        with contextlib.suppress(FileNotFoundError):
            upload.path.unlink()

    async def commit_upload(self, repository: str, upload_id: str, digest: str) -> int:
        """Move a finished upload into the repository, or discard it if its hash is wrong."""
        upload = self.upload(repository, upload_id)
        async with upload.lock:
            self._uploads.pop(upload_id, None)
            actual = "sha256:" + upload.hasher.hexdigest()
            if actual != digest:
                with contextlib.suppress(FileNotFoundError):
                    upload.path.unlink()
                raise DigestMismatch(f"uploaded content hashes to {actual}, not {digest}")
            self._ensure_repo(repository)
            await asyncio.to_thread(self._commit_sync, upload.path, self.blob_path(repository, digest))
            return upload.size

    @staticmethod
    def _commit_sync(source: Path, target: Path) -> None:
        with open(source, "rb+") as fh:
            os.fsync(fh.fileno())
        target.parent.mkdir(parents=True, exist_ok=True)
        # uploads/ and repos/ share the data dir, hence one filesystem: the rename is atomic.
        os.replace(source, target)
        fsync_dir(target.parent)

    # -- manifests and tags -------------------------------------------------------------------

    def _lock(self, repository: str) -> asyncio.Lock:
        return self._index_locks.setdefault(repository, asyncio.Lock())

    def read_index(self, repository: str) -> ImageIndex | None:
        try:
            raw = (self.repo_dir(repository) / "index.json").read_bytes()
        except FileNotFoundError:
            return None
        try:
            return ImageIndex.model_validate_json(raw)
        except ValidationError as exc:
            raise OSError(f"corrupt index.json in repository {repository}: {exc}") from exc

    @staticmethod
    def _dump_index(index: ImageIndex) -> bytes:
        return index.model_dump_json(by_alias=True, exclude_none=True, indent=2).encode()

    def resolve(self, repository: str, reference: str) -> Descriptor | None:
        """Find the manifest a tag or digest names; only index.json decides what is a manifest."""
        index = self.read_index(repository)
        if index is None:
            return None
        by_digest = DIGEST_RE.match(reference) is not None
        for entry in index.manifests:
            if (entry.digest if by_digest else entry.tag) == reference:
                return entry
        return None

    def has_manifest(self, repository: str, digest: str) -> bool:
        return self.resolve(repository, digest) is not None

    def tags(self, repository: str) -> list[str] | None:
        index = self.read_index(repository)
        if index is None:
            return None
        return sorted({entry.tag for entry in index.manifests if entry.tag is not None})

    async def put_manifest(self, repository: str, tag: str | None, data: bytes, media_type: str) -> str:
        digest = sha256_digest(data)
        async with self._lock(repository):
            repo = self._ensure_repo(repository)
            blob = self.blob_path(repository, digest)
            if not blob.is_file():
                await asyncio.to_thread(atomic_write, blob, data)
            index = self.read_index(repository) or ImageIndex()
            entries = [e for e in index.manifests if tag is None or e.tag != tag]
            if tag is not None:
                # A tagged entry makes an untagged one for the same digest redundant.
                entries = [e for e in entries if not (e.digest == digest and e.tag is None)]
                entries.append(
                    Descriptor(
                        mediaType=media_type,
                        digest=digest,
                        size=len(data),
                        annotations={REF_NAME: tag},
                    )
                )
            elif not any(e.digest == digest for e in entries):
                entries.append(Descriptor(mediaType=media_type, digest=digest, size=len(data)))
            index.manifests = entries
            await asyncio.to_thread(atomic_write, repo / "index.json", self._dump_index(index))
        return digest

    async def delete_manifest(self, repository: str, reference: str) -> bool:
        """By digest: the manifest and all its tags go. By tag: only the tag goes.

        The manifest's bytes stay in blobs/ (there is no garbage collection): the same bytes may
        also have been uploaded as a plain blob, and removing them would break that blob.
        """
        async with self._lock(repository):
            index = self.read_index(repository)
            if index is None:
                return False
            if DIGEST_RE.match(reference):
                kept = [e for e in index.manifests if e.digest != reference]
            else:
                target = next((e for e in index.manifests if e.tag == reference), None)
                if target is None:
                    return False
                kept = [e for e in index.manifests if e is not target]
                if not any(e.digest == target.digest for e in kept):
                    # The manifest stays reachable by digest, as the distribution spec wants.
                    untagged = target.model_copy(deep=True)
                    annotations = dict(untagged.annotations or {})
                    annotations.pop(REF_NAME, None)
                    untagged.annotations = annotations or None
                    kept.append(untagged)
            if len(kept) == len(index.manifests) and DIGEST_RE.match(reference):
                return False
            index.manifests = kept
            await asyncio.to_thread(
                atomic_write, self.repo_dir(repository) / "index.json", self._dump_index(index)
            )
        return True

    def read_manifest(self, repository: str, entry: Descriptor) -> bytes:
        return self.blob_path(repository, entry.digest).read_bytes()
