"""The device's artifact store against real registries: re-use, verification, disk checks, GC."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from edge_agent._store import ArtifactStore, InsufficientDiskError
from modules import DigestMismatchError, ModelfleetError
from modules.oci import RegistryClient, sha256_bytes
from publisher import Model, Module, Workspace
from tests._proxy import FaultProxy
from tests._services import Service, free_port

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
IRIS_ONNX = EXAMPLES / "models" / "iris" / "model.onnx"
SCORE = EXAMPLES / "iris-service" / "score.py"


def _name(prefix: str) -> str:
    return f"{prefix}-{os.urandom(3).hex()}"


@dataclass
class Published:
    """A registered model and a module packaging it, as the device will find them."""

    model: Model
    module: Module
    weights: bytes

    @property
    def weights_digest(self) -> str:
        return sha256_bytes(self.weights)


async def _publish(
    url: str, tmp_path: Path, *, reuse: Published | None = None, script: str = ""
) -> Published:
    """Package a module of `reuse`'s model, or of a new one (ONNX plus random weights)."""
    ws = Workspace.create(tmp_path / _name("ws"), registry=url)
    if reuse is None:
        folder = tmp_path / _name("model")
        folder.mkdir()
        shutil.copy(IRIS_ONNX, folder / "model.onnx")
        weights = os.urandom(300_000)
        (folder / "weights.bin").write_bytes(weights)
        model = await Model.register_async(ws, folder, _name("m"))
    else:
        model, weights = reuse.model, reuse.weights
    source = tmp_path / _name("src")
    source.mkdir()
    (source / "score.py").write_text(script or SCORE.read_text())
    module = await Module.package_async(ws, _name("svc"), [model], entry_script=source / "score.py")
    return Published(model=model, module=module, weights=weights)


@pytest.fixture
async def proxy(registry: Service) -> AsyncIterator[FaultProxy]:
    """Counts every request, so a test can tell which blobs really crossed the wire."""
    fault = FaultProxy(registry.url)
    await fault.start()
    try:
        yield fault
    finally:
        await fault.stop()


def _blob_gets(proxy: FaultProxy, digest: str) -> int:
    return sum(1 for method, path, _ in proxy.log.requests if method == "GET" and path.endswith(digest))


def _model_file(stored: Any, model: Any, name: str) -> Path:
    """Where a model's file lands in a stored module: Azure ML v1's `<name>/<version>/<path>`, the
    path as registered (a registered folder's files are under the folder's name)."""
    path = next(f.path for f in model.files if Path(f.path).name == name)
    return stored.model_dir / model.name / str(model.version) / path


def _blob_files(store_root: Path) -> list[str]:
    return sorted(p.name for p in (store_root / "blobs" / "sha256").iterdir())


def _layers(store: ArtifactStore, digest: str) -> dict[str, int]:
    """Layer digest -> size, from the manifest the store keeps for offline use and GC."""
    manifest = json.loads((store.root / "manifests" / f"{digest[7:]}.json").read_bytes())
    return {layer["digest"]: layer["size"] for layer in manifest["layers"]}


def _corrupt(path: Path) -> None:
    """Flip a few bytes in place, keeping the size: only a re-hash can tell."""
    path.chmod(0o644)
    with path.open("r+b") as f:
        f.seek(1000)
        data = f.read(8)
        f.seek(1000)
        f.write(bytes(b ^ 0xFF for b in data))


async def test_materialized_module_has_the_entry_script_and_model_files(
    registry: Service, tmp_path: Path
) -> None:
    pub = await _publish(registry.url, tmp_path)
    store = ArtifactStore(tmp_path / "store")
    seen: list[tuple[int, int]] = []
    async with RegistryClient(registry.url) as client:
        stored = await store.ensure_module(
            client, pub.module.repository, pub.module.digest, progress=lambda d, t: seen.append((d, t))
        )
    assert stored.digest == pub.module.digest
    assert stored.spec == pub.module.spec
    assert stored.entry_script == stored.code_dir / "score.py"
    assert stored.entry_script.read_text() == SCORE.read_text()
    weights = _model_file(stored, pub.model, "weights.bin")
    assert weights.read_bytes() == pub.weights
    assert (_model_file(stored, pub.model, "model.onnx")).read_bytes() == IRIS_ONNX.read_bytes()
    assert os.path.samefile(weights, store.blob_path(pub.weights_digest))  # a link, not a second copy
    assert (stored.root / ".complete").exists()
    assert seen and seen[-1] == (sum(_layers(store, pub.module.digest).values()),) * 2


async def test_ensuring_a_stored_module_again_downloads_nothing(registry: Service, tmp_path: Path) -> None:
    pub = await _publish(registry.url, tmp_path)
    store = ArtifactStore(tmp_path / "store")
    async with RegistryClient(registry.url) as client:
        first = await store.ensure_module(client, pub.module.repository, pub.module.digest)
        downloaded = client.stats.bytes_downloaded
        requests = client.stats.requests
        assert downloaded > len(pub.weights)
        again = await store.ensure_module(client, pub.module.repository, pub.module.digest)
        assert client.stats.bytes_downloaded == downloaded
        assert client.stats.requests == requests
    assert again == first


async def test_concurrent_ensures_of_one_module_download_each_blob_once(
    registry: Service, proxy: FaultProxy, tmp_path: Path
) -> None:
    pub = await _publish(registry.url, tmp_path)
    store = ArtifactStore(tmp_path / "store")
    async with RegistryClient(proxy.url) as client:
        a, b, c = await asyncio.gather(
            *(store.ensure_module(client, pub.module.repository, pub.module.digest) for _ in range(3))
        )
    assert a == b == c
    assert _blob_gets(proxy, pub.weights_digest) == 1


async def test_two_modules_sharing_a_model_store_its_blob_once(
    registry: Service, proxy: FaultProxy, tmp_path: Path
) -> None:
    first = await _publish(registry.url, tmp_path)
    second = await _publish(registry.url, tmp_path, reuse=first, script="def init(): pass\n")
    store = ArtifactStore(tmp_path / "store")
    async with RegistryClient(proxy.url) as client:
        one = await store.ensure_module(client, first.module.repository, first.module.digest)
        two = await store.ensure_module(client, second.module.repository, second.module.digest)
    assert _blob_gets(proxy, first.weights_digest) == 1
    # two model files shared, two code layers of their own
    assert len(_blob_files(store.root)) == 4
    weights = _model_file(one, first.model, "weights.bin")
    assert os.path.samefile(weights, _model_file(two, first.model, "weights.bin"))
    assert two.entry_script is not None and two.entry_script.read_text() == "def init(): pass\n"


async def test_a_blob_corrupted_on_disk_is_detected_and_fetched_again(
    registry: Service, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    pub = await _publish(registry.url, tmp_path)
    store = ArtifactStore(tmp_path / "store")
    repo, digest = pub.module.repository, pub.module.digest
    async with RegistryClient(registry.url) as client:
        stored = await store.ensure_module(client, repo, digest)
        assert await store.verify_module(digest)
        weights = _model_file(stored, pub.model, "weights.bin")

        _corrupt(store.blob_path(pub.weights_digest))
        with caplog.at_level(logging.WARNING, logger="edge_agent._store"):
            assert not await store.verify_module(digest)
        assert "corrupt" in caplog.text
        assert not store.blob_path(pub.weights_digest).exists()
        assert not stored.root.exists()
        assert store.stored_module(digest) is None

        before = client.stats.bytes_downloaded
        await store.ensure_module(client, repo, digest)
        assert client.stats.bytes_downloaded - before >= len(pub.weights)
        assert weights.read_bytes() == pub.weights

        # Without an explicit verify_module: the next ensure re-hashes and repairs by itself.
        _corrupt(store.blob_path(pub.weights_digest))
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="edge_agent._store"):
            repaired = await store.ensure_module(client, repo, digest)
        assert pub.weights_digest in caplog.text
    assert (_model_file(repaired, pub.model, "weights.bin")).read_bytes() == pub.weights
    assert await store.verify_module(digest)


async def test_too_little_free_space_downloads_nothing_and_keeps_stored_modules(
    distribution: Service, tmp_path: Path
) -> None:
    kept = await _publish(distribution.url, tmp_path)
    big = await _publish(distribution.url, tmp_path)
    free = {"bytes": 10 << 30}
    store = ArtifactStore(
        tmp_path / "store",
        reserve_bytes=1 << 20,
        disk_usage=lambda _root: (20 << 30, 10 << 30, free["bytes"]),
    )
    async with RegistryClient(distribution.url) as client:
        await store.ensure_module(client, kept.module.repository, kept.module.digest)
        blobs_before = _blob_files(store.root)
        free["bytes"] = (1 << 20) + 1000  # the reserve plus far less than the new weights
        before = client.stats.bytes_downloaded
        with pytest.raises(InsufficientDiskError) as caught:
            await store.ensure_module(client, big.module.repository, big.module.digest)
        assert client.stats.bytes_downloaded - before < 16 << 10  # the spec, no layer
    error = caught.value
    assert error.free_bytes == (1 << 20) + 1000
    assert error.needed_bytes >= len(big.weights)
    assert "KiB" in str(error) and "MiB" in str(error)  # both sizes, in words a person reads
    assert _blob_files(store.root) == blobs_before
    assert sorted(p.name for p in (store.root / "modules").iterdir()) == [kept.module.digest[7:]]
    assert await store.verify_module(kept.module.digest)


async def test_a_download_cut_half_way_still_ends_with_a_correct_store(
    registry: Service, proxy: FaultProxy, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pub = await _publish(registry.url, tmp_path)
    store = ArtifactStore(tmp_path / "store")
    proxy.cut_blob_downloads = 1  # the spec read...
    async with RegistryClient(proxy.url, retry_delay=0.01) as client:
        read_spec = client.get_blob

        async def then_cut_layers(*args: object, **kwargs: object) -> bytes:
            data = await read_spec(*args, **kwargs)  # type: ignore[arg-type]
            proxy.cut_blob_downloads = 2  # ...and then the first two layer downloads
            return data

        monkeypatch.setattr(client, "get_blob", then_cut_layers)
        stored = await store.ensure_module(client, pub.module.repository, pub.module.digest)
        assert proxy.cut_blob_downloads == 0
        assert client.stats.resumed_downloads >= 1
    assert any(rng is not None for method, _, rng in proxy.log.requests if method == "GET")
    assert (_model_file(stored, pub.model, "weights.bin")).read_bytes() == pub.weights
    assert not [name for name in _blob_files(store.root) if name.endswith(".partial")]
    assert await store.verify_module(pub.module.digest)


async def test_partials_of_a_wanted_module_survive_gc_and_the_next_attempt_resumes(
    registry: Service, proxy: FaultProxy, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pub = await _publish(registry.url, tmp_path)
    store = ArtifactStore(tmp_path / "store")
    async with RegistryClient(proxy.url, retry_delay=0.01) as client:
        read_spec = client.get_blob

        async def then_cut_every_layer(*args: object, **kwargs: object) -> bytes:
            data = await read_spec(*args, **kwargs)  # type: ignore[arg-type]
            proxy.cut_blob_downloads = 1000  # every layer download from here on is cut half-way
            return data

        monkeypatch.setattr(client, "get_blob", then_cut_every_layer)
        with pytest.raises(ModelfleetError):
            await store.ensure_module(client, pub.module.repository, pub.module.digest)
    partials = [name for name in _blob_files(store.root) if name.endswith(".partial")]
    assert partials, "the cut download left nothing to resume"
    store.gc([pub.module.digest])  # still wanted: its partial downloads stay
    assert [name for name in _blob_files(store.root) if name.endswith(".partial")] == partials
    proxy.cut_blob_downloads = 0
    proxy.log.requests.clear()
    async with RegistryClient(proxy.url, retry_delay=0.01) as client:
        stored = await store.ensure_module(client, pub.module.repository, pub.module.digest)
    assert any(rng is not None for method, _, rng in proxy.log.requests if method == "GET")
    assert await store.verify_module(stored.digest)


async def test_a_corrupt_server_raises_and_leaves_nothing(
    registry: Service, proxy: FaultProxy, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pub = await _publish(registry.url, tmp_path)
    store = ArtifactStore(tmp_path / "store")
    proxy.corrupt_blobs = True
    async with RegistryClient(proxy.url) as client:
        with pytest.raises(DigestMismatchError):  # the spec itself
            await store.ensure_module(client, pub.module.repository, pub.module.digest)

        # Serve the spec intact so the layer downloads are the ones found corrupt.
        read_spec = client.get_blob

        async def intact_spec(*args: object, **kwargs: object) -> bytes:
            proxy.corrupt_blobs = False
            try:
                return await read_spec(*args, **kwargs)  # type: ignore[arg-type]
            finally:
                proxy.corrupt_blobs = True

        monkeypatch.setattr(client, "get_blob", intact_spec)
        with pytest.raises(DigestMismatchError, match="does not match its digest"):
            await store.ensure_module(client, pub.module.repository, pub.module.digest)
    assert _blob_files(store.root) == []
    assert list((store.root / "modules").iterdir()) == []
    assert store.stored_module(pub.module.digest) is None
    # The manifest is kept from the start of a fetch (so gc keeps a wanted module's partial
    # downloads for the next attempt); gc removes it once the module is no longer wanted.
    store.gc([])
    assert list((store.root / "manifests").iterdir()) == []


async def test_gc_keeps_what_is_referenced_and_removes_the_rest(registry: Service, tmp_path: Path) -> None:
    first = await _publish(registry.url, tmp_path)
    second = await _publish(registry.url, tmp_path, reuse=first, script="def init(): pass\n")
    other = await _publish(registry.url, tmp_path)
    store = ArtifactStore(tmp_path / "store")
    async with RegistryClient(registry.url) as client:
        for pub in (first, second, other):
            await store.ensure_module(client, pub.module.repository, pub.module.digest)
    total = store.usage()
    assert total > 2 * len(first.weights)
    kept_layers = _layers(store, first.module.digest)
    unshared = {
        digest: size
        for pub in (second, other)
        for digest, size in _layers(store, pub.module.digest).items()
        if digest not in kept_layers
    }
    # other's weights and second's code (the ONNX file and other's code equal first's, byte for byte)
    assert other.weights_digest in unshared and len(unshared) == 2

    report = store.gc([first.module.digest])
    assert report.removed_modules == 2
    assert report.removed_blobs == len(unshared)
    assert store.usage() == total - sum(unshared.values())
    assert report.freed_bytes >= sum(unshared.values())
    assert set(_blob_files(store.root)) == {d[7:] for d in _layers(store, first.module.digest)}
    assert store.usage() == sum(_layers(store, first.module.digest).values())
    assert await store.verify_module(first.module.digest)
    assert store.stored_module(second.module.digest) is None
    assert store.stored_module(other.module.digest) is None
    assert [p.name for p in (store.root / "manifests").iterdir()] == [f"{first.module.digest[7:]}.json"]

    # The shared weights survived while the remaining module uses them; they go with the last one.
    report = store.gc([])
    assert report.removed_modules == 1 and report.removed_blobs == len(kept_layers)
    assert store.usage() == 0
    assert list((store.root / "modules").iterdir()) == []
    assert list((store.root / "manifests").iterdir()) == []


async def test_stored_module_works_offline_and_across_restarts(distribution: Service, tmp_path: Path) -> None:
    pub = await _publish(distribution.url, tmp_path)
    root = tmp_path / "store"
    async with RegistryClient(distribution.url) as client:
        await ArtifactStore(root).ensure_module(client, pub.module.repository, pub.module.digest)

    restarted = ArtifactStore(root)  # a new process: nothing in memory
    stored = restarted.stored_module(pub.module.digest)
    assert stored is not None and stored.spec == pub.module.spec
    assert restarted.stored_module("sha256:" + "0" * 64) is None
    unreachable = f"http://127.0.0.1:{free_port()}"
    async with RegistryClient(unreachable, retries=0) as offline:
        again = await restarted.ensure_module(offline, pub.module.repository, pub.module.digest)
        assert offline.stats.requests == 0
    assert again == stored
    assert (_model_file(stored, pub.model, "weights.bin")).read_bytes() == pub.weights
