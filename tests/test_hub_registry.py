"""The embedded registry over real HTTP: the distribution-spec subset modelfleet and skopeo use."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from modules.hub import EmbeddedRegistry

CONFIG_TYPE = "application/vnd.modelfleet.module.config.v1+json"
MODEL_LAYER = "application/vnd.modelfleet.model.layer.v1+onnx"
CODE_LAYER = "application/vnd.modelfleet.code.layer.v1.tar+gzip"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


@pytest.fixture
async def registry(tmp_path: Path) -> AsyncIterator[EmbeddedRegistry]:
    reg = EmbeddedRegistry(tmp_path / "hub")
    await reg.start()
    yield reg
    await reg.stop()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def push_blob(
    http: aiohttp.ClientSession, base: str, name: str, data: bytes, headers: dict | None = None
) -> str:
    digest = digest_of(data)
    async with http.post(
        f"{base}/v2/{name}/blobs/uploads/?digest={digest}", data=data, headers=headers
    ) as resp:
        assert resp.status == 201, await resp.text()
        assert resp.headers["Docker-Content-Digest"] == digest
    return digest


def artifact_manifest(config: bytes, layers: list[tuple[bytes, str]]) -> bytes:
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": CONFIG_TYPE, "digest": digest_of(config), "size": len(config)},
        "layers": [
            {
                "mediaType": media_type,
                "digest": digest_of(data),
                "size": len(data),
                "annotations": {"org.opencontainers.image.title": f"layer{i}"},
            }
            for i, (data, media_type) in enumerate(layers)
        ],
        "annotations": {"org.modelfleet.description": "test artifact"},
    }
    # Unusual spacing on purpose: the registry must keep the bytes, not re-serialize them.
    return json.dumps(manifest, indent=3).encode()


async def push_artifact(
    http: aiohttp.ClientSession, base: str, name: str, tag: str, headers: dict | None = None
) -> tuple[bytes, dict[str, bytes]]:
    config = json.dumps({"entryScript": "score.py", "runtime": "python3.11"}).encode()
    layers = [(os.urandom(300_000), MODEL_LAYER), (b"print('hello')\n" * 50, CODE_LAYER)]
    blobs = {digest_of(config): config}
    for data, _ in layers:
        blobs[digest_of(data)] = data
    for data in blobs.values():
        await push_blob(http, base, name, data, headers)
    manifest = artifact_manifest(config, layers)
    async with http.put(
        f"{base}/v2/{name}/manifests/{tag}",
        data=manifest,
        headers={"Content-Type": OCI_MANIFEST, **(headers or {})},
    ) as resp:
        assert resp.status == 201, await resp.text()
        assert resp.headers["Docker-Content-Digest"] == digest_of(manifest)
    return manifest, blobs


async def test_base_endpoint(registry: EmbeddedRegistry, http: aiohttp.ClientSession) -> None:
    async with http.get(f"{registry.url}/v2/") as resp:
        assert resp.status == 200
        assert resp.headers["Docker-Distribution-API-Version"] == "registry/2.0"
        assert await resp.json() == {}


async def test_monolithic_blob_push_and_head(registry: EmbeddedRegistry, http: aiohttp.ClientSession) -> None:
    data = os.urandom(10_000)
    digest = await push_blob(http, registry.url, "models/iris", data)
    async with http.head(f"{registry.url}/v2/models/iris/blobs/{digest}") as resp:
        assert resp.status == 200
        assert resp.headers["Content-Length"] == str(len(data))
        assert resp.headers["Docker-Content-Digest"] == digest
        assert resp.headers["Content-Type"] == "application/octet-stream"
    async with http.get(f"{registry.url}/v2/models/iris/blobs/{digest}") as resp:
        assert resp.status == 200
        assert await resp.read() == data
    stored = registry.layout.root / "repos/models/iris/blobs/sha256" / digest.split(":")[1]
    assert stored.read_bytes() == data
    layout = json.loads((registry.layout.root / "repos/models/iris/oci-layout").read_text())
    assert layout == {"imageLayoutVersion": "1.0.0"}


async def test_chunked_upload(registry: EmbeddedRegistry, http: aiohttp.ClientSession) -> None:
    data = os.urandom(3 * 1024 * 1024 + 17)
    digest = digest_of(data)
    base = registry.url
    async with http.post(f"{base}/v2/modules/iris-service/blobs/uploads/") as resp:
        assert resp.status == 202
        location = resp.headers["Location"]
        assert resp.headers["Range"] == "0-0"
        assert resp.headers["Docker-Upload-UUID"]
    chunk = 1024 * 1024
    offset = 0
    for start in range(0, 2 * chunk, chunk):
        part = data[start : start + chunk]
        async with http.patch(
            base + location,
            data=part,
            headers={
                "Content-Range": f"{start}-{start + len(part) - 1}",
                "Content-Type": "application/octet-stream",
            },
        ) as resp:
            assert resp.status == 202, await resp.text()
            offset = start + len(part)
            assert resp.headers["Range"] == f"0-{offset - 1}"
            location = resp.headers["Location"]
    # A chunk that skips ahead is refused and changes nothing.
    async with http.patch(
        base + location, data=b"x", headers={"Content-Range": f"{offset + 5}-{offset + 5}"}
    ) as resp:
        assert resp.status == 416
    async with http.get(base + location) as resp:
        assert resp.status == 204
        assert resp.headers["Range"] == f"0-{offset - 1}"

    # A streamed PATCH without Content-Range (what skopeo sends), then the rest with the PUT.
    async def stream() -> AsyncIterator[bytes]:
        for i in range(offset, 3 * chunk, 65536):
            yield data[i : min(i + 65536, 3 * chunk)]

    async with http.patch(base + location, data=stream()) as resp:
        assert resp.status == 202
        assert resp.headers["Range"] == f"0-{3 * chunk - 1}"
    async with http.put(f"{base}{location}?digest={digest}", data=data[3 * chunk :]) as resp:
        assert resp.status == 201, await resp.text()
        assert resp.headers["Docker-Content-Digest"] == digest
        assert resp.headers["Location"] == f"/v2/modules/iris-service/blobs/{digest}"
    async with http.get(f"{base}/v2/modules/iris-service/blobs/{digest}") as resp:
        assert await resp.read() == data
    async with http.get(base + location) as resp:
        assert resp.status == 404
        assert (await resp.json())["errors"][0]["code"] == "BLOB_UPLOAD_UNKNOWN"


async def test_cancel_upload(registry: EmbeddedRegistry, http: aiohttp.ClientSession) -> None:
    async with http.post(f"{registry.url}/v2/a/blobs/uploads") as resp:
        assert resp.status == 202  # The trailing slash is optional.
    async with http.post(f"{registry.url}/v2/a/blobs/uploads/") as resp:
        location = resp.headers["Location"]
        upload_id = resp.headers["Docker-Upload-UUID"]
    async with http.patch(registry.url + location, data=b"abc") as resp:
        assert resp.status == 202
    async with http.delete(registry.url + location) as resp:
        assert resp.status == 204
    async with http.put(f"{registry.url}{location}?digest={digest_of(b'abc')}") as resp:
        assert resp.status == 404
    assert not (registry.layout.root / "uploads" / upload_id).exists()


async def test_digest_mismatch_keeps_nothing(registry: EmbeddedRegistry, http: aiohttp.ClientSession) -> None:
    wrong = digest_of(b"something else")
    async with http.post(f"{registry.url}/v2/a/b/blobs/uploads/?digest={wrong}", data=b"hi") as r:
        assert r.status == 400
        body = await r.json()
        assert body["errors"][0]["code"] == "DIGEST_INVALID"
    async with http.post(f"{registry.url}/v2/a/b/blobs/uploads/") as resp:
        location = resp.headers["Location"]
    async with http.put(f"{registry.url}{location}?digest={wrong}", data=b"hello") as resp:
        assert resp.status == 400
        assert (await resp.json())["errors"][0]["code"] == "DIGEST_INVALID"
    for digest in (wrong, digest_of(b"hi"), digest_of(b"hello")):
        async with http.head(f"{registry.url}/v2/a/b/blobs/{digest}") as resp:
            assert resp.status == 404
    assert list((registry.layout.root / "uploads").iterdir()) == []
    blob_dir = registry.layout.root / "repos/a/b/blobs/sha256"
    assert not blob_dir.exists() or list(blob_dir.iterdir()) == []


async def test_range_get(registry: EmbeddedRegistry, http: aiohttp.ClientSession) -> None:
    data = os.urandom(5000)
    digest = await push_blob(http, registry.url, "models/iris", data)
    url = f"{registry.url}/v2/models/iris/blobs/{digest}"
    async with http.get(url, headers={"Range": "bytes=1000-"}) as resp:
        assert resp.status == 206
        assert resp.headers["Content-Range"] == "bytes 1000-4999/5000"
        assert resp.headers["Content-Length"] == "4000"
        assert await resp.read() == data[1000:]
    async with http.get(url, headers={"Range": "bytes=10-19"}) as resp:
        assert resp.status == 206
        assert await resp.read() == data[10:20]
    async with http.get(url, headers={"Range": "bytes=6000-"}) as resp:
        assert resp.status == 416
        assert resp.headers["Content-Range"] == "bytes */5000"


async def test_cross_repository_mount(registry: EmbeddedRegistry, http: aiohttp.ClientSession) -> None:
    data = os.urandom(2048)
    digest = await push_blob(http, registry.url, "models/iris", data)
    url = f"{registry.url}/v2/modules/iris-service/blobs/uploads/?mount={digest}&from=models/iris"
    async with http.post(url) as resp:
        assert resp.status == 201
        assert resp.headers["Docker-Content-Digest"] == digest
        assert resp.headers["Location"] == f"/v2/modules/iris-service/blobs/{digest}"
    async with http.get(f"{registry.url}/v2/modules/iris-service/blobs/{digest}") as resp:
        assert await resp.read() == data
    hexd = digest.split(":")[1]
    source = registry.layout.root / "repos/models/iris/blobs/sha256" / hexd
    target = registry.layout.root / "repos/modules/iris-service/blobs/sha256" / hexd
    assert os.path.samefile(source, target)
    # A blob the source does not have opens an ordinary upload instead.
    missing = digest_of(b"nope")
    url = f"{registry.url}/v2/modules/other/blobs/uploads/?mount={missing}&from=models/iris"
    async with http.post(url) as resp:
        assert resp.status == 202
        assert "/v2/modules/other/blobs/uploads/" in resp.headers["Location"]


async def test_manifest_round_trip_custom_config(
    registry: EmbeddedRegistry, http: aiohttp.ClientSession
) -> None:
    manifest, _ = await push_artifact(http, registry.url, "modules/iris-service", "1")
    digest = digest_of(manifest)
    for reference in ("1", digest):
        url = f"{registry.url}/v2/modules/iris-service/manifests/{reference}"
        async with http.get(url, headers={"Accept": OCI_MANIFEST}) as resp:
            assert resp.status == 200
            assert resp.headers["Content-Type"] == OCI_MANIFEST
            assert resp.headers["Docker-Content-Digest"] == digest
            assert await resp.read() == manifest
        async with http.head(url) as resp:
            assert resp.status == 200
            assert resp.headers["Content-Length"] == str(len(manifest))
            assert resp.headers["Docker-Content-Digest"] == digest
    index = json.loads((registry.layout.root / "repos/modules/iris-service/index.json").read_text())
    assert index["manifests"][0]["annotations"] == {"org.opencontainers.image.ref.name": "1"}
    assert index["manifests"][0]["digest"] == digest


async def test_media_type_from_manifest_field(
    registry: EmbeddedRegistry, http: aiohttp.ClientSession
) -> None:
    config = b"{}"
    await push_blob(http, registry.url, "x", config)
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
            "config": {
                "mediaType": "application/vnd.docker.container.image.v1+json",
                "digest": digest_of(config),
                "size": 2,
            },
            "layers": [],
        }
    ).encode()
    async with http.put(f"{registry.url}/v2/x/manifests/latest", data=manifest) as resp:
        assert resp.status == 201
    async with http.get(f"{registry.url}/v2/x/manifests/latest") as resp:
        assert resp.headers["Content-Type"] == "application/vnd.docker.distribution.manifest.v2+json"


async def test_manifest_with_missing_blob_rejected(
    registry: EmbeddedRegistry, http: aiohttp.ClientSession
) -> None:
    config = b'{"a": 1}'
    await push_blob(http, registry.url, "models/iris", config)
    manifest = artifact_manifest(config, [(b"never pushed", MODEL_LAYER)])
    async with http.put(
        f"{registry.url}/v2/models/iris/manifests/1",
        data=manifest,
        headers={"Content-Type": OCI_MANIFEST},
    ) as resp:
        assert resp.status == 400
        error = (await resp.json())["errors"][0]
        assert error["code"] == "MANIFEST_BLOB_UNKNOWN"
        assert digest_of(b"never pushed") in json.dumps(error["detail"])
    async with http.get(f"{registry.url}/v2/models/iris/manifests/1") as resp:
        assert resp.status == 404
        assert (await resp.json())["errors"][0]["code"] == "MANIFEST_UNKNOWN"
    # A digest reference must match the bytes.
    async with http.put(
        f"{registry.url}/v2/models/iris/manifests/{digest_of(b'other')}",
        data=artifact_manifest(config, []),
        headers={"Content-Type": OCI_MANIFEST},
    ) as resp:
        assert resp.status == 400
        assert (await resp.json())["errors"][0]["code"] == "DIGEST_INVALID"


async def test_image_index_needs_its_manifests(
    registry: EmbeddedRegistry, http: aiohttp.ClientSession
) -> None:
    manifest, _ = await push_artifact(http, registry.url, "multi", "amd64")
    entry = {"mediaType": OCI_MANIFEST, "digest": digest_of(manifest), "size": len(manifest)}
    good = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [entry]}).encode()
    bad_entry = {**entry, "digest": digest_of(b"missing")}
    bad = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [bad_entry]})
    headers = {"Content-Type": OCI_INDEX}
    url = f"{registry.url}/v2/multi/manifests/all"
    async with http.put(url, data=bad.encode(), headers=headers) as resp:
        assert resp.status == 400
        assert (await resp.json())["errors"][0]["code"] == "MANIFEST_BLOB_UNKNOWN"
    async with http.put(url, data=good, headers=headers) as resp:
        assert resp.status == 201
    async with http.get(url) as resp:
        assert resp.headers["Content-Type"] == OCI_INDEX
        assert await resp.read() == good


async def test_tags_and_catalog_pagination(registry: EmbeddedRegistry, http: aiohttp.ClientSession) -> None:
    base = registry.url
    await push_artifact(http, base, "models/iris", "1")
    for tag in ("2", "3", "4", "latest"):
        await push_artifact(http, base, "models/iris", tag)
    await push_artifact(http, base, "modules/iris-service", "1")
    await push_artifact(http, base, "alpha", "1")

    async with http.get(f"{base}/v2/models/iris/tags/list") as resp:
        assert await resp.json() == {"name": "models/iris", "tags": ["1", "2", "3", "4", "latest"]}
    async with http.get(f"{base}/v2/models/iris/tags/list?n=2") as resp:
        assert (await resp.json())["tags"] == ["1", "2"]
        assert resp.headers["Link"] == '</v2/models/iris/tags/list?n=2&last=2>; rel="next"'
    async with http.get(f"{base}/v2/models/iris/tags/list?n=2&last=2") as resp:
        assert (await resp.json())["tags"] == ["3", "4"]
    async with http.get(f"{base}/v2/models/iris/tags/list?n=2&last=4") as resp:
        assert (await resp.json())["tags"] == ["latest"]
        assert "Link" not in resp.headers
    async with http.get(f"{base}/v2/nothing/here/tags/list") as resp:
        assert resp.status == 404
        assert (await resp.json())["errors"][0]["code"] == "NAME_UNKNOWN"

    async with http.get(f"{base}/v2/_catalog") as resp:
        repos = (await resp.json())["repositories"]
        assert repos == ["alpha", "models/iris", "modules/iris-service"]
    async with http.get(f"{base}/v2/_catalog?n=1") as resp:
        assert (await resp.json())["repositories"] == ["alpha"]
        assert resp.headers["Link"] == '</v2/_catalog?n=1&last=alpha>; rel="next"'
    async with http.get(f"{base}/v2/_catalog?n=1&last=alpha") as resp:
        assert (await resp.json())["repositories"] == ["models/iris"]
        link = resp.headers["Link"]
    # Follow the Link header as a client would: the slash in the name survives the round trip.
    next_path = link.split(">")[0].removeprefix("<")
    async with http.get(base + next_path) as resp:
        assert (await resp.json())["repositories"] == ["modules/iris-service"]
        assert "Link" not in resp.headers


async def test_delete_by_digest_removes_tags(registry: EmbeddedRegistry, http: aiohttp.ClientSession) -> None:
    base = registry.url
    manifest, _ = await push_artifact(http, base, "models/iris", "1")
    async with http.put(
        f"{base}/v2/models/iris/manifests/stable",
        data=manifest,
        headers={"Content-Type": OCI_MANIFEST},
    ) as resp:
        assert resp.status == 201
    other, _ = await push_artifact(http, base, "models/iris", "2")
    async with http.get(f"{base}/v2/models/iris/tags/list") as resp:
        assert (await resp.json())["tags"] == ["1", "2", "stable"]

    # Deleting a tag keeps the manifest reachable by digest.
    async with http.delete(f"{base}/v2/models/iris/manifests/2") as resp:
        assert resp.status == 202
    async with http.get(f"{base}/v2/models/iris/manifests/{digest_of(other)}") as resp:
        assert resp.status == 200
    async with http.delete(f"{base}/v2/models/iris/manifests/{digest_of(manifest)}") as resp:
        assert resp.status == 202
    async with http.get(f"{base}/v2/models/iris/tags/list") as resp:
        assert (await resp.json())["tags"] == []
    for ref in ("1", "stable", digest_of(manifest)):
        async with http.get(f"{base}/v2/models/iris/manifests/{ref}") as resp:
            assert resp.status == 404
    async with http.delete(f"{base}/v2/models/iris/manifests/{digest_of(manifest)}") as resp:
        assert resp.status == 404


async def test_blob_delete(registry: EmbeddedRegistry, http: aiohttp.ClientSession) -> None:
    digest = await push_blob(http, registry.url, "a", b"bye")
    async with http.delete(f"{registry.url}/v2/a/blobs/{digest}") as resp:
        assert resp.status == 202
    async with http.get(f"{registry.url}/v2/a/blobs/{digest}") as resp:
        assert resp.status == 404
        assert (await resp.json())["errors"][0]["code"] == "BLOB_UNKNOWN"


@pytest.mark.parametrize("name", ["Models/iris", "models//iris", "-x", "models/iris-", "a/blobs", "x" * 256])
async def test_invalid_name(registry: EmbeddedRegistry, http: aiohttp.ClientSession, name: str) -> None:
    async with http.post(f"{registry.url}/v2/{name}/blobs/uploads/") as resp:
        assert resp.status == 400
        body = await resp.json()
        assert body["errors"][0]["code"] == "NAME_INVALID"


async def test_basic_auth(tmp_path: Path, http: aiohttp.ClientSession) -> None:
    reg = EmbeddedRegistry(tmp_path / "hub", username="alice", password="s3cret")
    base = await reg.start()
    try:
        async with http.get(f"{base}/v2/") as resp:
            assert resp.status == 401
            assert resp.headers["WWW-Authenticate"] == 'Basic realm="modelfleet-hub"'
            assert (await resp.json())["errors"][0]["code"] == "UNAUTHORIZED"
        async with http.get(f"{base}/v2/", headers={"Authorization": basic("alice", "no")}) as r:
            assert r.status == 401
        good = {"Authorization": basic("alice", "s3cret")}
        async with http.get(f"{base}/v2/", headers=good) as resp:
            assert resp.status == 200
        manifest, _ = await push_artifact(http, base, "models/iris", "1", headers=good)
        async with http.get(f"{base}/v2/models/iris/manifests/1", headers=good) as resp:
            assert await resp.read() == manifest
    finally:
        await reg.stop()


async def test_token_auth(tmp_path: Path, http: aiohttp.ClientSession) -> None:
    reg = EmbeddedRegistry(tmp_path / "hub", username="alice", password="s3cret", token_auth=True)
    base = await reg.start()
    try:
        async with http.get(f"{base}/v2/models/iris/tags/list") as resp:
            assert resp.status == 401
            challenge = resp.headers["WWW-Authenticate"]
        assert challenge == (
            f'Bearer realm="{base}/token",service="modelfleet-hub",scope="repository:models/iris:pull,push"'
        )
        async with http.get(f"{base}/v2/") as resp:
            assert resp.status == 401
            assert "scope=" not in resp.headers["WWW-Authenticate"]
        token_url = f"{base}/token?service=modelfleet-hub&scope=repository:models/iris:pull,push"
        async with http.get(token_url) as resp:
            assert resp.status == 401
        async with http.get(token_url, headers={"Authorization": basic("alice", "bad")}) as resp:
            assert resp.status == 401
        async with http.get(token_url, headers={"Authorization": basic("alice", "s3cret")}) as r:
            assert r.status == 200
            issued = await r.json()
        assert issued["token"] == issued["access_token"]
        assert issued["expires_in"] == 300
        # Basic credentials are for the token endpoint only.
        async with http.get(f"{base}/v2/", headers={"Authorization": basic("alice", "s3cret")}) as r:
            assert r.status == 401
        bearer = {"Authorization": f"Bearer {issued['token']}"}
        async with http.get(f"{base}/v2/", headers=bearer) as resp:
            assert resp.status == 200
        await push_artifact(http, base, "models/iris", "1", headers=bearer)
        async with http.get(f"{base}/v2/", headers={"Authorization": "Bearer forged"}) as resp:
            assert resp.status == 401
    finally:
        await reg.stop()


# -- skopeo interop ---------------------------------------------------------------------------


async def skopeo(*args: str) -> str:
    """Run skopeo without blocking the event loop the registry is serving from."""
    if shutil.which("skopeo") is None:
        pytest.fail("skopeo is not installed: run `make test` or `apt-get install skopeo`", pytrace=False)
    proc = await asyncio.create_subprocess_exec(
        "skopeo",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), timeout=120)
    assert proc.returncode == 0, out.decode()
    return out.decode()


async def fetch_artifact(
    http: aiohttp.ClientSession, base: str, name: str, tag: str, headers: dict | None = None
) -> tuple[bytes, dict[str, bytes]]:
    async with http.get(f"{base}/v2/{name}/manifests/{tag}", headers=headers) as resp:
        assert resp.status == 200, await resp.text()
        manifest = await resp.read()
    parsed = json.loads(manifest)
    blobs = {}
    for desc in [parsed["config"], *parsed["layers"]]:
        async with http.get(f"{base}/v2/{name}/blobs/{desc['digest']}", headers=headers) as r:
            blobs[desc["digest"]] = await r.read()
    return manifest, blobs


async def test_skopeo_round_trip(
    registry: EmbeddedRegistry, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    host = registry.url.removeprefix("http://")
    manifest, blobs = await push_artifact(http, registry.url, "modules/x", "1")
    oci_dir = tmp_path / "airgap"
    await skopeo(
        "copy",
        "--preserve-digests",
        "--src-tls-verify=false",
        f"docker://{host}/modules/x:1",
        f"oci:{oci_dir}:1",
    )
    index = json.loads((oci_dir / "index.json").read_text())
    assert index["manifests"][0]["digest"] == digest_of(manifest)
    assert (oci_dir / "blobs/sha256" / digest_of(manifest).split(":")[1]).read_bytes() == manifest
    for digest, data in blobs.items():
        assert (oci_dir / "blobs/sha256" / digest.split(":")[1]).read_bytes() == data

    await skopeo(
        "copy",
        "--preserve-digests",
        "--dest-tls-verify=false",
        f"oci:{oci_dir}:1",
        f"docker://{host}/copy/x:1",
    )
    copied_manifest, copied_blobs = await fetch_artifact(http, registry.url, "copy/x", "1")
    assert copied_manifest == manifest
    assert copied_blobs == blobs
    out = await skopeo("inspect", "--raw", "--tls-verify=false", f"docker://{host}/copy/x:1")
    assert out.encode() == manifest


async def test_skopeo_with_basic_auth(tmp_path: Path, http: aiohttp.ClientSession) -> None:
    reg = EmbeddedRegistry(tmp_path / "hub", username="alice", password="s3cret")
    base = await reg.start()
    host = base.removeprefix("http://")
    good = {"Authorization": basic("alice", "s3cret")}
    try:
        manifest, blobs = await push_artifact(http, base, "modules/x", "1", headers=good)
        oci_dir = tmp_path / "airgap"
        await skopeo(
            "copy",
            "--preserve-digests",
            "--src-tls-verify=false",
            "--src-creds",
            "alice:s3cret",
            f"docker://{host}/modules/x:1",
            f"oci:{oci_dir}:1",
        )
        await skopeo(
            "copy",
            "--preserve-digests",
            "--dest-tls-verify=false",
            "--dest-creds",
            "alice:s3cret",
            f"oci:{oci_dir}:1",
            f"docker://{host}/copy/x:2",
        )
        copied = await fetch_artifact(http, base, "copy/x", "2", headers=good)
        assert copied == (manifest, blobs)
    finally:
        await reg.stop()


async def test_skopeo_with_token_auth(tmp_path: Path, http: aiohttp.ClientSession) -> None:
    reg = EmbeddedRegistry(tmp_path / "hub", username="alice", password="s3cret", token_auth=True)
    base = await reg.start()
    host = base.removeprefix("http://")
    try:
        oci_dir = tmp_path / "airgap"
        async with http.get(
            f"{base}/token?service=modelfleet-hub", headers={"Authorization": basic("alice", "s3cret")}
        ) as resp:
            bearer = {"Authorization": f"Bearer {(await resp.json())['token']}"}
        manifest, blobs = await push_artifact(http, base, "modules/x", "1", headers=bearer)
        await skopeo(
            "copy",
            "--preserve-digests",
            "--src-tls-verify=false",
            "--src-creds",
            "alice:s3cret",
            f"docker://{host}/modules/x:1",
            f"oci:{oci_dir}:1",
        )
        await skopeo(
            "copy",
            "--preserve-digests",
            "--dest-tls-verify=false",
            "--dest-creds",
            "alice:s3cret",
            f"oci:{oci_dir}:1",
            f"docker://{host}/copy/x:1",
        )
        assert await fetch_artifact(http, base, "copy/x", "1", headers=bearer) == (manifest, blobs)
    finally:
        await reg.stop()
