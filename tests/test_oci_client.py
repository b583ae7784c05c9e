"""The shared OCI client against real registries: push, pull, auth, resume, verification."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from modules import (
    AuthenticationError,
    DigestMismatchError,
    NotFoundError,
    RegistryUnreachableError,
)
from modules.oci import RegistryClient, RegistryCredentials, sha256_bytes
from modules.oci.media_types import OCI_MANIFEST
from tests._proxy import FaultProxy
from tests._services import Service, free_port
from tests.conftest import REGISTRY_USER


def _artifact(payload: bytes) -> tuple[bytes, bytes, bytes]:
    config = b'{"kind": "test"}'
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {
                "mediaType": "application/vnd.modelfleet.test.config.v1+json",
                "digest": sha256_bytes(config),
                "size": len(config),
            },
            "layers": [
                {
                    "mediaType": "application/vnd.modelfleet.test.layer.v1",
                    "digest": sha256_bytes(payload),
                    "size": len(payload),
                }
            ],
        }
    ).encode()
    return config, payload, manifest


async def _push(client: RegistryClient, repo: str, tag: str, payload: bytes) -> str:
    config, layer, manifest = _artifact(payload)
    await client.push_blob(repo, config)
    await client.push_blob(repo, layer)
    return await client.put_manifest(repo, tag, manifest, OCI_MANIFEST)


async def test_manifest_round_trips_byte_identical_and_tags_list(registry: Service) -> None:
    async with RegistryClient(registry.url) as client:
        payload = os.urandom(5000)
        digest = await _push(client, "it/roundtrip", "1", payload)
        manifest = await client.get_manifest("it/roundtrip", "1")
        assert manifest.digest == digest
        assert manifest.media_type == OCI_MANIFEST
        assert manifest.body == _artifact(payload)[2]
        assert "1" in await client.list_tags("it/roundtrip")
        assert "it/roundtrip" in await client.catalog()
        assert await client.get_blob("it/roundtrip", sha256_bytes(payload)) == payload


async def test_second_push_of_same_blob_sends_no_bytes_and_mount_moves_none(registry: Service) -> None:
    payload = os.urandom(20000)
    async with RegistryClient(registry.url) as client:
        assert await client.push_blob("it/a", payload) == "uploaded"
        before = client.stats.bytes_uploaded
        assert await client.push_blob("it/a", payload) == "existing"
        assert await client.push_blob("it/b", payload, mount_from=["it/a"]) == "mounted"
        assert client.stats.bytes_uploaded == before


async def test_delete_removes_manifest_and_its_tag(registry: Service) -> None:
    async with RegistryClient(registry.url) as client:
        digest = await _push(client, "it/delete", "7", os.urandom(100))
        await client.delete_manifest("it/delete", digest)
        assert "7" not in await client.list_tags("it/delete")
        with pytest.raises(NotFoundError):
            await client.get_manifest("it/delete", digest)


async def test_missing_repository_lists_no_tags_and_missing_manifest_is_not_found(registry: Service) -> None:
    async with RegistryClient(registry.url) as client:
        assert await client.list_tags("it/never-pushed") == []
        with pytest.raises(NotFoundError):
            await client.get_manifest("it/never-pushed", "1")


async def test_unreachable_registry_is_a_clear_error() -> None:
    async with RegistryClient(f"http://127.0.0.1:{free_port()}", retries=1, retry_delay=0.01) as client:
        with pytest.raises(RegistryUnreachableError, match="cannot reach registry"):
            await client.ping()


async def test_basic_auth_required_wrong_and_right(distribution_basic_auth: Service) -> None:
    url = distribution_basic_auth.url
    async with RegistryClient(url) as anonymous:
        with pytest.raises(AuthenticationError, match="requires credentials"):
            await anonymous.ping()
    wrong = RegistryCredentials(username=REGISTRY_USER[0], password="not it")
    async with RegistryClient(url, wrong) as client:
        with pytest.raises(AuthenticationError, match="refused the credentials"):
            await client.ping()
    right = RegistryCredentials(username=REGISTRY_USER[0], password=REGISTRY_USER[1])
    async with RegistryClient(url, right) as client:
        await _push(client, "it/auth", "1", b"secret model")
        assert await client.list_tags("it/auth") == ["1"]


async def test_download_cut_half_way_resumes_with_range(distribution: Service, tmp_path: Path) -> None:
    payload = os.urandom(300_000)
    async with RegistryClient(distribution.url) as client:
        await client.push_blob("it/resume", payload)
    proxy = FaultProxy(distribution.url)
    await proxy.start()
    try:
        proxy.cut_blob_downloads = 1
        async with RegistryClient(proxy.url, retry_delay=0.01) as client:
            dest = tmp_path / "blob"
            await client.download_blob("it/resume", sha256_bytes(payload), dest, size=len(payload))
            assert dest.read_bytes() == payload
            assert client.stats.resumed_downloads == 1
        ranges = [r for (m, p, r) in proxy.log.requests if m == "GET" and "/blobs/" in p]
        assert ranges[0] is None
        assert ranges[1] == f"bytes={len(payload) // 2}-"
        assert not (tmp_path / "blob.partial").exists()
    finally:
        await proxy.stop()


async def test_partial_file_from_an_earlier_process_is_resumed(distribution: Service, tmp_path: Path) -> None:
    payload = os.urandom(100_000)
    digest = sha256_bytes(payload)
    (tmp_path / "blob.partial").write_bytes(payload[:60_000])
    async with RegistryClient(distribution.url) as client:
        await client.push_blob("it/resume2", payload)
    proxy = FaultProxy(distribution.url)
    await proxy.start()
    try:
        async with RegistryClient(proxy.url) as client:
            await client.download_blob("it/resume2", digest, tmp_path / "blob", size=len(payload))
            assert client.stats.bytes_downloaded == 40_000
        assert (tmp_path / "blob").read_bytes() == payload
        assert [r for (_, p, r) in proxy.log.requests if "/blobs/" in p] == ["bytes=60000-"]
    finally:
        await proxy.stop()


async def test_blob_whose_bytes_do_not_match_digest_is_rejected_and_not_kept(
    distribution: Service, tmp_path: Path
) -> None:
    payload = os.urandom(50_000)
    async with RegistryClient(distribution.url) as client:
        await client.push_blob("it/corrupt", payload)
    proxy = FaultProxy(distribution.url)
    await proxy.start()
    try:
        proxy.corrupt_blobs = True
        async with RegistryClient(proxy.url) as client:
            with pytest.raises(DigestMismatchError, match="does not match its digest"):
                await client.download_blob("it/corrupt", sha256_bytes(payload), tmp_path / "blob")
            with pytest.raises(DigestMismatchError):
                await client.get_blob("it/corrupt", sha256_bytes(payload))
        assert list(tmp_path.iterdir()) == []
    finally:
        await proxy.stop()


async def test_bearer_token_challenge_flow(tmp_path: Path) -> None:
    from modules.hub import EmbeddedRegistry

    registry = EmbeddedRegistry(tmp_path, username="ci", password="s3cret", token_auth=True)
    url = await registry.start("127.0.0.1", 0)
    try:
        async with RegistryClient(url) as anonymous:
            with pytest.raises(AuthenticationError):
                await anonymous.list_tags("it/token", missing_ok=False)
        async with RegistryClient(url, RegistryCredentials(username="ci", password="nope")) as wrong:
            with pytest.raises(AuthenticationError, match="refused the credentials"):
                await _push(wrong, "it/token", "1", b"x")
        async with RegistryClient(url, RegistryCredentials(username="ci", password="s3cret")) as client:
            await _push(client, "it/token", "1", b"model bytes")
            assert await client.list_tags("it/token") == ["1"]
            assert await client.catalog() == ["it/token"]
        async with RegistryClient(url, RegistryCredentials(token="not-issued")) as static:
            with pytest.raises(AuthenticationError, match="refused the access token"):
                await static.list_tags("it/token")
    finally:
        await registry.stop()
