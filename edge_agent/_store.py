"""The device's artifact store: module artifacts kept content-addressed, verified and collectable.

A device may run for months on flaky links and small disks, so the store is built around three
promises: a blob is stored once however many modules use it, nothing that failed verification is
ever used, and a crash at any moment leaves either a complete module or none (never a half one
that looks complete). Layout under `root`:

    blobs/sha256/<hex>        every layer blob, exactly once (model files, code archives)
    manifests/<hex>.json      module manifests by digest (needed offline and for GC)
    modules/<hex>/            a materialized module: models/<title> hard-linked to the blobs,
                              code/ extracted, spec.json, and `.complete` written last

The network side (resume, digest checks, atomic placement of one blob) is `RegistryClient`'s;
this module decides what to fetch, whether it fits, and how it becomes a runnable folder.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from modules import InvalidPackageError, ModelfleetError, RegistryUnreachableError
from modules.artifact import (
    CODE_DIR,
    Descriptor,
    ModuleManifest,
    extract_code,
    parse_module_manifest,
    parse_module_spec,
)
from modules.atomic_file import fsync_dir, write_atomic
from modules.oci import RegistryClient, check_digest, sha256_bytes, sha256_file
from modules.spec import ModuleSpec
from modules.unpack import UnpackedModule

log = logging.getLogger(__name__)

DiskUsage = Callable[[Path], tuple[int, int, int]]
Progress = Callable[[int, int], None]

_COMPLETE = ".complete"
_SPEC = "spec.json"
_PARTIAL = ".partial"
_TMP_PREFIX = ".tmp-"
_TRASH_PREFIX = ".trash-"


class InsufficientDiskError(ModelfleetError):
    """The bytes a module still needs would eat into the space the device must keep free.

    Raised before anything is downloaded, so a full disk never costs the modules already stored.
    """

    def __init__(self, needed_bytes: int, free_bytes: int, *, reserve_bytes: int = 0, what: str = "") -> None:
        self.needed_bytes = needed_bytes
        self.free_bytes = free_bytes
        self.reserve_bytes = reserve_bytes
        subject = f"module {what}" if what else "the module"
        super().__init__(
            f"not enough disk space: {subject} needs {human_bytes(needed_bytes)} more "
            f"(and {human_bytes(reserve_bytes)} must stay free), but only {human_bytes(free_bytes)} "
            "is free"
        )


class CorruptArtifactError(ModelfleetError):
    """An artifact whose bytes verified but whose content the store cannot use.

    Examples: a manifest that is not a modelfleet module, a spec that does not validate, an
    unsafe file title, a code archive that does not unpack.
    """


@contextlib.contextmanager
def _corrupt() -> Iterator[None]:
    """The contract's reader says "invalid package"; on a device that is a corrupt artifact."""
    try:
        yield
    except InvalidPackageError as exc:
        raise CorruptArtifactError(str(exc)) from exc


# A complete module on disk: the same layout `modules.unpack` produces on a workstation.
StoredModule = UnpackedModule


@dataclass(frozen=True)
class GcReport:
    removed_modules: int
    removed_blobs: int
    freed_bytes: int


class ArtifactStore:
    """Module artifacts on the device's disk; one instance per root, used from one event loop.

    `gc` and `usage` are synchronous and read the disk: call them from the loop's thread (they
    see in-flight `ensure_module` calls and protect their blobs), not from a worker thread.
    """

    def __init__(
        self,
        root: Path,
        *,
        reserve_bytes: int = 64 << 20,
        disk_usage: DiskUsage = shutil.disk_usage,
    ) -> None:
        self.root = Path(root)
        self.reserve_bytes = reserve_bytes
        self._disk_usage = disk_usage
        self._blobs = self.root / "blobs" / "sha256"
        self._manifests = self.root / "manifests"
        self._modules = self.root / "modules"
        for folder in (self._blobs, self._manifests, self._modules):
            folder.mkdir(parents=True, exist_ok=True)
        self._module_locks: dict[str, asyncio.Lock] = {}
        self._blob_locks: dict[str, asyncio.Lock] = {}
        # digest -> blob digests (empty until its manifest is known): what gc must not touch.
        self._in_flight: dict[str, set[str]] = {}

    # -- paths --------------------------------------------------------------------------------

    def blob_path(self, digest: str) -> Path:
        return self._blobs / _hex(digest)

    def _manifest_path(self, digest: str) -> Path:
        return self._manifests / f"{_hex(digest)}.json"

    def _module_path(self, digest: str) -> Path:
        return self._modules / _hex(digest)

    # -- reading what is there ----------------------------------------------------------------

    def stored_module(self, digest: str) -> StoredModule | None:
        """The module if it is complete and its blobs are present with the right sizes.

        No network and no hashing of large files, so it is what the agent uses at start-up and
        offline; `verify_module` is the expensive check.
        """
        check_digest(digest)
        folder = self._module_path(digest)
        try:
            if (folder / _COMPLETE).read_text().strip() != digest:
                return None
            manifest = self._read_manifest(digest)
            if manifest is None:
                return None
            spec_bytes = (folder / _SPEC).read_bytes()
            if sha256_bytes(spec_bytes) != manifest.config.digest:
                return None
            spec = ModuleSpec.model_validate_json(spec_bytes)
            for layer in manifest.unique_layers():
                if self.blob_path(layer.digest).stat().st_size != layer.size:
                    return None
            for layer, target in manifest.model_targets(folder):
                if target.stat().st_size != layer.size:
                    return None
        except (OSError, ValueError, ValidationError, InvalidPackageError):
            return None
        return StoredModule(digest=digest, spec=spec, root=folder)

    def _read_manifest(self, digest: str) -> ModuleManifest | None:
        """The stored manifest, only if it still hashes to its name."""
        try:
            body = self._manifest_path(digest).read_bytes()
        except FileNotFoundError:
            return None
        if sha256_bytes(body) != digest:
            log.warning("stored manifest %s is corrupt; it will be fetched again", digest)
            return None
        try:
            return parse_module_manifest(body, digest)
        except InvalidPackageError:
            return None

    def usage(self) -> int:
        """Bytes held in blobs/, unfinished downloads included (they occupy the disk too)."""
        total = 0
        for entry in _scandir(self._blobs):
            with contextlib.suppress(OSError):
                if entry.is_file(follow_symlinks=False):
                    total += entry.stat(follow_symlinks=False).st_size
        return total

    # -- verification -------------------------------------------------------------------------

    async def verify_module(self, digest: str) -> bool:
        """Re-hash every blob the module uses (and any materialized copy that is not a link).

        A blob that does not match is deleted together with the materialized folder, so the next
        `ensure_module` fetches it again; returns False then, or when the module is not stored.
        Cost: reads every byte of the module's files.
        """
        check_digest(digest)
        async with self._module_lock(digest):
            return await self._verify(digest)

    async def _verify(self, digest: str) -> bool:
        if self.stored_module(digest) is None:
            return False  # not complete: nothing a caller could use, so nothing to vouch for
        manifest = self._read_manifest(digest)
        folder = self._module_path(digest)
        if manifest is None:
            return False
        good = True
        for layer in manifest.unique_layers():
            async with self._blob_lock(layer.digest):
                if not await asyncio.to_thread(self._blob_intact, layer):
                    good = False
        if good:
            for layer, target in manifest.model_targets(folder):
                if not target.exists():
                    continue  # stored_module reports it incomplete; nothing to hash
                if _same_file(target, self.blob_path(layer.digest)):
                    continue  # a hard link: the blob's hash above covered it
                if await asyncio.to_thread(_file_digest, target) != layer.digest:
                    log.warning("materialized file %s of module %s is corrupt", target, digest)
                    good = False
        if not good:
            await asyncio.to_thread(_remove_tree, folder)
        return good

    def _blob_intact(self, layer: Descriptor) -> bool:
        """Hash one blob; a missing one is False, a wrong one is deleted (it must be refetched)."""
        path = self.blob_path(layer.digest)
        try:
            actual, size = sha256_file(path)
        except FileNotFoundError:
            return False
        if actual == layer.digest and size == layer.size:
            return True
        log.warning(
            "blob %s is corrupt on disk (hashes to %s, %d bytes); deleting it so it is fetched again",
            layer.digest,
            actual,
            size,
        )
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        return False

    # -- fetching -----------------------------------------------------------------------------

    async def ensure_module(
        self,
        client: RegistryClient,
        repository: str,
        digest: str,
        *,
        verify: bool = True,
        progress: Progress | None = None,
    ) -> StoredModule:
        """Make the module `repository@digest` complete on disk and return it.

        A module already complete is returned without any network use; with `verify=True` (the
        default) its blobs are re-hashed first, which reads every byte of its model files. Pass
        `verify=False` where that cost matters (a restart with large models) and schedule
        `verify_module` instead. Otherwise: the manifest and spec are fetched (verified by the
        client), blobs already present are re-hashed (a corrupt one is deleted and fetched
        again), free space is checked before a single byte is downloaded, missing blobs are
        downloaded (resuming `.partial` files), and the module folder is built next to its final
        place and renamed in. `progress(done, total)` counts the bytes of blobs still missing.
        The space check counts blob bytes only: extracted code (and model copies where hard links
        fail) must fit in `reserve_bytes`, and concurrent fetches of different modules each
        check against the same free space.
        Concurrent calls for one digest share a lock, so nothing is downloaded twice.
        """
        check_digest(digest)
        async with self._module_lock(digest):
            stored = self.stored_module(digest)
            if stored is not None and (not verify or await self._verify(digest)):
                return stored
            self._in_flight[digest] = set()
            try:
                return await self._fetch(client, repository, digest, progress)
            finally:
                del self._in_flight[digest]

    async def _fetch(
        self, client: RegistryClient, repository: str, digest: str, progress: Progress | None
    ) -> StoredModule:
        fetched = await client.get_manifest(repository, digest)
        where = f"{repository}@{digest}"
        with _corrupt():
            manifest = parse_module_manifest(fetched.body, where)
        self._in_flight[digest] = {layer.digest for layer in manifest.layers}
        config = await _get_config(client, repository, manifest.config.digest)
        with _corrupt():
            spec = parse_module_spec(config, where)
            manifest.model_targets(self._module_path(digest))  # refuse unsafe titles before any download

        missing: list[Descriptor] = []
        for layer in manifest.unique_layers():
            async with self._blob_lock(layer.digest):
                if not await asyncio.to_thread(self._blob_intact, layer):
                    missing.append(layer)
        missing_bytes = sum(max(0, layer.size - self._partial_size(layer)) for layer in missing)
        _total, _used, free = self._disk_usage(self.root)
        if free - missing_bytes < self.reserve_bytes:
            raise InsufficientDiskError(
                missing_bytes, free, reserve_bytes=self.reserve_bytes, what=f"{repository}@{digest}"
            )

        # Stored before any blob: if the download is cut, gc still sees which partial files belong
        # to this (still wanted) module and keeps them for the resumed attempt.
        await asyncio.to_thread(write_atomic, self._manifest_path(digest), fetched.body)
        total = sum(layer.size for layer in missing)
        done = 0
        for layer in missing:
            await self._download(client, repository, layer, done, total, progress)
            done += layer.size

        await asyncio.to_thread(self._materialize, digest, manifest, config)
        return StoredModule(digest=digest, spec=spec, root=self._module_path(digest))

    def _partial_size(self, layer: Descriptor) -> int:
        """Bytes a resumed download will not fetch again; an over-long partial is discarded."""
        try:
            size = self.blob_path(layer.digest).with_name(_hex(layer.digest) + _PARTIAL).stat().st_size
        except FileNotFoundError:
            return 0
        return size if size <= layer.size else 0

    async def _download(
        self,
        client: RegistryClient,
        repository: str,
        layer: Descriptor,
        done: int,
        total: int,
        progress: Progress | None,
    ) -> None:
        path = self.blob_path(layer.digest)
        async with self._blob_lock(layer.digest):
            if path.exists():  # another module fetched it while we waited for the lock
                return

            def report(offset: int) -> None:
                if progress is not None:
                    progress(done + offset, total)

            await client.download_blob(repository, layer.digest, path, size=layer.size, progress=report)
            # Read-only: model files are hard links to the blob, so a write to one would corrupt both.
            with contextlib.suppress(OSError):
                path.chmod(0o444)

    def _materialize(self, digest: str, manifest: ModuleManifest, config: bytes) -> None:
        """Build the module folder beside its final place, then rename it in.

        The `.complete` marker is written (atomically) inside the temporary folder last, and the
        folder only gets its real name by rename, so a crash leaves a `.tmp-` folder for gc,
        never a module that looks complete.
        """
        final = self._module_path(digest)
        tmp = self._modules / f"{_TMP_PREFIX}{_hex(digest)}-{os.urandom(4).hex()}"
        tmp.mkdir()
        try:
            with _corrupt():
                targets = manifest.model_targets(tmp)
            for layer, target in targets:
                target.parent.mkdir(parents=True, exist_ok=True)
                target.unlink(missing_ok=True)
                _link_or_copy(self.blob_path(layer.digest), target)
            (tmp / CODE_DIR).mkdir()
            for layer in manifest.code_layers:
                with _corrupt():
                    extract_code(self.blob_path(layer.digest), tmp / CODE_DIR)
            write_atomic(tmp / _SPEC, config)
            write_atomic(tmp / _COMPLETE, digest.encode())
            if final.exists():
                trash = self._modules / f"{_TRASH_PREFIX}{_hex(digest)}-{os.urandom(4).hex()}"
                os.rename(final, trash)
                os.rename(tmp, final)
                _remove_tree(trash)
            else:
                os.rename(tmp, final)
            fsync_dir(self._modules)
        except BaseException:
            _remove_tree(tmp)
            raise

    # -- garbage collection -------------------------------------------------------------------

    async def gc_async(self, keep: Iterable[str]) -> GcReport:
        """`gc` in a worker thread, so the event loop never waits on the disk (removing a large
        module folder can take a while); what is being fetched is read here, on the loop."""
        in_flight = {digest: set(blobs) for digest, blobs in self._in_flight.items()}
        return await asyncio.to_thread(self.gc, set(keep), in_flight)

    def gc(self, keep: Iterable[str], in_flight: dict[str, set[str]] | None = None) -> GcReport:
        """Remove modules, manifests and blobs that no kept module references.

        A blob shared with a kept module survives; modules being fetched right now count as kept.
        `freed_bytes` counts blobs, unfinished downloads and the files of removed module folders
        that were not hard links to a blob (extracted code, copies).
        """
        in_flight = self._in_flight if in_flight is None else in_flight
        kept = {check_digest(d) for d in keep} | set(in_flight)
        kept_hex = {_hex(d) for d in kept}
        busy_hex = {_hex(d) for d in in_flight}
        referenced: set[str] = set()
        for blobs in in_flight.values():
            referenced |= {_hex(b) for b in blobs}
        for digest in kept:
            manifest = self._read_manifest(digest)
            if manifest is not None:
                referenced |= {_hex(layer.digest) for layer in manifest.layers}

        removed_modules = 0
        freed = 0
        for entry in _scandir(self._modules):
            name = entry.name
            if name.startswith((_TMP_PREFIX, _TRASH_PREFIX)):
                # Left by a crash unless a fetch of that digest is building it right now.
                if name.split("-")[1] not in busy_hex:
                    freed += _unlinked_size(Path(entry.path))
                    _remove_tree(Path(entry.path))
            elif name not in kept_hex:
                freed += _unlinked_size(Path(entry.path))
                _remove_tree(Path(entry.path))
                removed_modules += 1
        for entry in _scandir(self._manifests):
            if entry.name.removesuffix(".json") not in kept_hex:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(entry.path)
        removed_blobs = 0
        for entry in _scandir(self._blobs):
            name = entry.name.removesuffix(_PARTIAL)
            if name in referenced:
                continue
            with contextlib.suppress(FileNotFoundError):
                size = entry.stat(follow_symlinks=False).st_size
                os.unlink(entry.path)
                freed += size
                if not entry.name.endswith(_PARTIAL):
                    removed_blobs += 1
        if removed_modules or removed_blobs:
            log.info(
                "gc removed %d modules and %d blobs, %s freed",
                removed_modules,
                removed_blobs,
                human_bytes(freed),
            )
        return GcReport(removed_modules=removed_modules, removed_blobs=removed_blobs, freed_bytes=freed)

    # -- locks --------------------------------------------------------------------------------

    def _module_lock(self, digest: str) -> asyncio.Lock:
        return self._module_locks.setdefault(digest, asyncio.Lock())

    def _blob_lock(self, digest: str) -> asyncio.Lock:
        """Two modules sharing a model must not write the same `.partial` file at once."""
        return self._blob_locks.setdefault(digest, asyncio.Lock())


def human_bytes(n: int) -> str:
    """Sizes as people read them in a log line: 1.5 GiB, not 1610612736."""
    if abs(n) < 1024:
        return f"{n} B"
    value = float(n)
    for unit in ("KiB", "MiB", "GiB"):
        value /= 1024
        if abs(value) < 1024:
            return f"{value:.1f} {unit}"
    return f"{value / 1024:.1f} TiB"


async def _get_config(client: RegistryClient, repository: str, digest: str, attempts: int = 3) -> bytes:
    """The spec blob, read whole; a read cut mid-body is tried again.

    `get_blob` does not resume (it has no file to resume into), and on a flaky link a cut spec
    read would otherwise fail a module whose large layers would have resumed fine. Only cuts are
    retried: the manifest just came through, so the registry is there.
    """
    for attempt in range(1, attempts + 1):
        try:
            return await client.get_blob(repository, digest)
        except RegistryUnreachableError:
            if attempt == attempts:
                raise
            log.info("reading the spec of %s@%s was cut; trying again", repository, digest)
    raise AssertionError("unreachable")


def _hex(digest: str) -> str:
    return check_digest(digest).split(":", 1)[1]


def _link_or_copy(blob: Path, target: Path) -> None:
    """A hard link costs no space; a copy is the fallback where the filesystem refuses links."""
    try:
        os.link(blob, target)
    except OSError as exc:
        log.debug("hard link %s -> %s failed (%s); copying", blob, target, exc)
        shutil.copyfile(blob, target)


def _file_digest(path: Path) -> str:
    return sha256_file(path)[0]


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _scandir(path: Path) -> list[os.DirEntry[str]]:
    try:
        with os.scandir(path) as it:
            return list(it)
    except FileNotFoundError:
        return []


def _unlinked_size(folder: Path) -> int:
    """Bytes that deleting `folder` really frees: files with no other link (not blob links)."""
    total = 0
    for dirpath, _dirs, files in os.walk(folder):
        for name in files:
            with contextlib.suppress(OSError):
                st = os.lstat(os.path.join(dirpath, name))
                if st.st_nlink == 1:
                    total += st.st_size
    return total


def _remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
