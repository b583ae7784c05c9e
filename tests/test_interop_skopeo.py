"""Standard tools move modelfleet artifacts: skopeo between the embedded registry and Distribution."""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path

import pytest

from modules.oci import RegistryClient, registry_host
from publisher import Model, Module, Workspace
from tests._services import Service

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


async def _skopeo(*args: str) -> None:
    binary = shutil.which("skopeo")
    if binary is None:
        pytest.fail("skopeo is not installed: run `make test` or `apt-get install skopeo`", pytrace=False)
    proc = await asyncio.create_subprocess_exec(
        binary, "copy", "--preserve-digests", "--src-tls-verify=false", "--dest-tls-verify=false", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _, err = await asyncio.wait_for(proc.communicate(), timeout=120)
    assert proc.returncode == 0, err.decode()


async def _artifact(url: str, repository: str, tag: str) -> tuple[bytes, dict[str, bytes]]:
    async with RegistryClient(url) as client:
        manifest = await client.get_manifest(repository, tag)
        body = manifest.json()
        blobs = {}
        for desc in [body["config"], *body["layers"]]:
            blobs[desc["digest"]] = await client.get_blob(repository, desc["digest"])
    return manifest.body, blobs


async def test_skopeo_copies_a_module_embedded_to_distribution_and_back_byte_identical(
    embedded_registry: Service, distribution: Service, tmp_path: Path
) -> None:
    ws = Workspace.create(tmp_path, registry=embedded_registry.url)
    name = f"iris-{os.urandom(3).hex()}"
    await Model.register_async(ws, EXAMPLES / "models" / "iris", name)
    module = await Module.package_async(
        ws, name + "-svc", [name], entry_script=EXAMPLES / "iris-service" / "score.py"
    )
    embedded, dist = registry_host(embedded_registry.url), registry_host(distribution.url)

    await _skopeo(f"docker://{embedded}/{module.repository}:1", f"docker://{dist}/{module.repository}:1")
    original = await _artifact(embedded_registry.url, module.repository, "1")
    copied = await _artifact(distribution.url, module.repository, "1")
    assert copied == original

    back = f"copied/{module.name}"
    await _skopeo(f"docker://{dist}/{module.repository}:1", f"docker://{embedded}/{back}:1")
    assert await _artifact(embedded_registry.url, back, "1") == original

    # and the copy is still a module the publisher reads, pinned to the same digest
    async with RegistryClient(embedded_registry.url) as client:
        assert await client.manifest_digest(back, "1") == module.digest
    shown = await Module.get_async(
        Workspace.create(tmp_path / "d", registry=distribution.url), module.name, 1
    )
    assert shown.spec == module.spec
