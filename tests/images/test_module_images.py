"""Module images, end to end with a real Docker engine and a Distribution registry behind basic auth.

The image is assembled without the engine (`modelfleet module package --image`); the engine only
pulls and runs it, as a device would.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import onnx
import pytest
import requests
from aiohttp import web
from multidict import CIMultiDict

from modules.image import ImageBuildError, ImageCache, LayerWriter, base_image
from modules.oci import RegistryClient
from publisher import Model, Module, Workspace
from publisher._image import build_module_image_async
from publisher.cli import main as publisher_main
from tests._docker import DockerEngine
from tests._proxy import FaultProxy
from tests._services import Service, free_port

ROOT = Path(__file__).resolve().parents[2]
IRIS_DIR = ROOT / "examples" / "models" / "iris"
SERVICE_DIR = ROOT / "examples" / "iris-service"
SAMPLE = json.loads((IRIS_DIR / "sample-input.json").read_text())
EXPECTED = ["setosa", "versicolor", "virginica"]
_HOP = {"host", "content-length", "transfer-encoding", "connection"}


def _name(prefix: str) -> str:
    return f"{prefix}-{os.urandom(3).hex()}"


def _registry_args(svc: Service) -> list[str]:
    assert svc.username and svc.password
    return ["--registry", svc.url, "--registry-user", svc.username, "--registry-password", svc.password]


def _package_with_image(
    svc: Service, name: str, model: str, capsys: pytest.CaptureFixture[str]
) -> dict[str, Any]:
    """`modelfleet module package ... --image --json`, as a user runs it."""
    capsys.readouterr()
    rc = publisher_main(
        [
            "module",
            "package",
            "-n",
            name,
            "-m",
            model,
            "--entry-script",
            str(SERVICE_DIR / "score.py"),
            "--requirements",
            str(SERVICE_DIR / "requirements.txt"),
            "--sample-input",
            str(IRIS_DIR / "sample-input.json"),
            "--image",
            "--json",
            *_registry_args(svc),
        ]
    )
    out = capsys.readouterr().out
    assert rc == 0, out
    return json.loads(out)


def _wait_for_score(url: str, timeout: float = 90.0, logs: Any = None) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            resp = requests.post(url, json=SAMPLE, timeout=5)
            if resp.status_code == 200:
                return resp.json()
            last = AssertionError(f"HTTP {resp.status_code}: {resp.text[:300]}")
        except requests.ConnectionError as exc:
            last = exc
        time.sleep(0.3)
    raise AssertionError(f"no answer from {url} within {timeout}s: {last}; {logs() if logs else ''}")


@contextlib.contextmanager
def _container(engine: DockerEngine, image: str, port: int) -> Iterator[str]:
    cid = engine.run(
        "run",
        "-d",
        "--network",
        "host",
        "-e",
        f"MODELFLEET_PORT={port}",
        "-e",
        "MODELFLEET_HOST=127.0.0.1",
        image,
    ).stdout.strip()
    try:
        yield cid
    finally:
        engine.run("rm", "-f", cid, check=False)


@contextlib.contextmanager
def _process_runtime(svc: Service, module: str, port: int, cache: Path) -> Iterator[subprocess.Popen[bytes]]:
    """The same published module served by the scoring host as a process on this machine."""
    cmd = [
        sys.executable,
        "-m",
        "modules.cli",
        "serve",
        "--module",
        module,
        "--port",
        str(port),
        "--processes",
        "1",
        "--cache-dir",
        str(cache),
        *_registry_args(svc),
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        yield proc
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.fixture(scope="module")
def iris_model(image_workspace: Workspace) -> Model:
    return Model.register(image_workspace, IRIS_DIR / "model.onnx", _name("iris"))


def test_module_image_from_a_basic_auth_registry_answers_like_the_process_runtime(
    docker_engine: DockerEngine,
    distribution_basic_auth: Service,
    base_image_ref: str,
    iris_model: Model,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = _package_with_image(distribution_basic_auth, _name("iris-svc"), iris_model.name, capsys)
    image = out["image"]["reference"]
    assert image.startswith(f"127.0.0.1:{distribution_basic_auth.port}/images/")

    refused = docker_engine.run("pull", image, check=False)
    assert refused.returncode != 0  # the registry requires credentials
    assert distribution_basic_auth.username and distribution_basic_auth.password
    docker_engine.login(
        f"127.0.0.1:{distribution_basic_auth.port}",
        distribution_basic_auth.username,
        distribution_basic_auth.password,
    )
    docker_engine.run("pull", image)

    port, reference_port = free_port(), free_port()
    with _container(docker_engine, image, port) as cid:
        in_container = _wait_for_score(
            f"http://127.0.0.1:{port}/score",
            logs=lambda: docker_engine.run("logs", cid, check=False).stderr[-2000:],
        )
    module_ref = f"{out['name']}:{out['version']}"
    with _process_runtime(distribution_basic_auth, module_ref, reference_port, tmp_path / "cache"):
        in_process = _wait_for_score(f"http://127.0.0.1:{reference_port}/score")
    print(f"container: {in_container}\nprocess:   {in_process}")
    assert in_container["predictions"] == EXPECTED
    assert in_container == in_process


async def test_building_the_same_module_twice_gives_the_same_digest(
    image_workspace: Workspace, base_image_ref: str, iris_model: Model
) -> None:
    name = _name("twice")
    first = await Module.package_async(
        image_workspace, name, [iris_model.name], entry_script=SERVICE_DIR / "score.py"
    )
    a, _ = await build_module_image_async(image_workspace, first)
    b, _ = await build_module_image_async(image_workspace, first)
    assert a.digest == b.digest
    # Packaged again from the same inputs: a new module version, the same image.
    again = await Module.package_async(
        image_workspace, name, [iris_model.name], entry_script=SERVICE_DIR / "score.py"
    )
    assert again.version == first.version + 1
    c, _ = await build_module_image_async(image_workspace, again)
    assert c.digest == a.digest, "the image must not depend on the module's version number or time"
    print(f"{a.reference} built 3 times, one digest")


class _CountingProxy(FaultProxy):
    """Counts the bytes sent to the engine: what a device's pull actually moves. Repeated request
    headers are kept (the engine sends one `Accept` line per manifest type)."""

    def __init__(self, upstream: str) -> None:
        super().__init__(upstream)
        self.response_bytes = 0
        self.blob_gets: list[str] = []

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        headers = CIMultiDict((k, v) for k, v in request.headers.items() if k.lower() not in _HOP)
        assert self._session is not None
        async with self._session.request(
            request.method,
            self.upstream + request.path_qs,
            headers=headers,
            data=body or None,
            allow_redirects=False,
        ) as upstream:
            payload = await upstream.read()
            out = CIMultiDict((k, v) for k, v in upstream.headers.items() if k.lower() not in _HOP)
        if "Location" in out and out["Location"].startswith(self.upstream):
            out["Location"] = self.url + out["Location"][len(self.upstream) :]
        self.response_bytes += len(payload)
        if request.method == "GET" and "/blobs/" in request.path and upstream.status == 200:
            self.blob_gets.append(request.path.rsplit("/", 1)[1])
        return web.Response(status=upstream.status, headers=out, body=payload)


async def test_a_model_only_update_moves_only_the_model_layer(
    docker_engine: DockerEngine,
    distribution_basic_auth: Service,
    image_workspace: Workspace,
    base_image_ref: str,
    iris_model: Model,
    tmp_path: Path,
) -> None:
    name = _name("update")
    v1 = await Module.package_async(
        image_workspace, name, [iris_model.name], entry_script=SERVICE_DIR / "score.py"
    )
    # A new version of the model: other bytes (a doc string), the same predictions.
    model = onnx.load(IRIS_DIR / "model.onnx")
    model.doc_string = "retrained"
    (tmp_path / "v2").mkdir()
    onnx.save(model, tmp_path / "v2" / "model.onnx")
    new_model = await Model.register_async(image_workspace, tmp_path / "v2" / "model.onnx", iris_model.name)
    v2 = await Module.package_async(
        image_workspace,
        name,
        [f"{new_model.name}:{new_model.version}"],
        entry_script=SERVICE_DIR / "score.py",
    )
    first, _ = await build_module_image_async(image_workspace, v1)
    second, _ = await build_module_image_async(image_workspace, v2)

    async with image_workspace.registry_client() as client:
        m1 = json.loads((await client.get_manifest(first.repository, first.digest)).body)
        m2 = json.loads((await client.get_manifest(second.repository, second.digest)).body)
    old = {layer["digest"] for layer in m1["layers"]}
    changed = [layer for layer in m2["layers"] if layer["digest"] not in old]
    print(f"layers: {len(m2['layers'])}, changed: {[(c['digest'][:19], c['size']) for c in changed]}")
    assert len(m1["layers"]) == len(m2["layers"])
    assert len(changed) == 1
    own = {layer["digest"]: layer["created_by"] for layer in second.layers}
    assert own[changed[0]["digest"]].startswith(
        f"model file {iris_model.name}/{new_model.version}/model.onnx"
    )

    # What a device with v1 pulls for v2, counted on the wire.
    assert distribution_basic_auth.username and distribution_basic_auth.password
    await asyncio.to_thread(
        docker_engine.login,
        f"127.0.0.1:{distribution_basic_auth.port}",
        distribution_basic_auth.username,
        distribution_basic_auth.password,
    )
    await asyncio.to_thread(docker_engine.run, "pull", first.reference)
    proxy = _CountingProxy(distribution_basic_auth.url)
    await proxy.start()
    try:
        host = proxy.url.removeprefix("http://")
        await asyncio.to_thread(
            docker_engine.login, host, distribution_basic_auth.username, distribution_basic_auth.password
        )
        pulled = f"{host}/{second.repository}@{second.digest}"
        await asyncio.to_thread(docker_engine.run, "pull", pulled)
    finally:
        await proxy.stop()
    # The engine stores layers as a chain (each on top of its parent), so a layer after a changed
    # one is fetched again even though its blob is unchanged: the code layer, kept last and small.
    index = next(i for i, layer in enumerate(m2["layers"]) if layer["digest"] == changed[0]["digest"])
    after = {layer["digest"]: layer["size"] for layer in m2["layers"][index + 1 :]}
    print(
        f"model-only update: image {second.size} bytes compressed; the device pulled {proxy.response_bytes} "
        f"bytes in all: the new model layer ({changed[0]['size']} bytes), the code layer after it "
        f"({sum(after.values())} bytes), the config and manifests; blobs fetched: {len(proxy.blob_gets)}"
    )
    assert changed[0]["digest"] in proxy.blob_gets
    assert set(proxy.blob_gets) <= {changed[0]["digest"], m2["config"]["digest"], *after}
    assert sum(after.values()) < 16 * 1024, "only the small code layer may follow the model layers"
    assert proxy.response_bytes < 64 * 1024


async def _push_base(
    ws: Workspace, repository: str, writer: LayerWriter, python: str, cache: ImageCache
) -> str:
    layer = cache.adopt(writer.write(cache.staging("test-base"), "test base"))
    config, manifest = base_image(layer, python, "test", "test base")
    async with ws.registry_client() as client:
        await client.push_blob(repository, layer.path, layer.digest)
        await client.push_blob(repository, config)
        await client.put_manifest(repository, "1", manifest, json.loads(manifest)["mediaType"])
    return f"{repository}:1"


async def test_a_base_without_python_is_refused_naming_what_is_missing(
    image_workspace: Workspace, iris_model: Model, tmp_path: Path
) -> None:
    cache = ImageCache(tmp_path / "cache")
    module = await Module.package_async(
        image_workspace, _name("nopy"), [iris_model.name], entry_script=SERVICE_DIR / "score.py"
    )
    bare = LayerWriter()
    bare.add_bytes("etc/os-release", b"ID=scratch\n")
    bare.add_bytes("bin/sh", b"\x7fELF", executable=True)
    ref = await _push_base(image_workspace, "bases/no-python", bare, "none", cache)
    with pytest.raises(
        ImageBuildError, match=r"has no python3 \(looked for /usr/local/bin/python3 and /usr/bin/python3\)"
    ):
        await build_module_image_async(image_workspace, module, base_image=ref, cache=cache, push=False)

    other = LayerWriter()
    other.add_symlink("usr/bin/python3", "python3.12")
    other.add_bytes("usr/bin/python3.12", b"\x7fELF", executable=True)
    other.add_bytes("usr/lib/python3.12/os.py", b"")
    ref = await _push_base(image_workspace, "bases/python312", other, "3.12", cache)
    with pytest.raises(ImageBuildError, match=r"base image has Python 3\.12.*CPython 3\.11"):
        await build_module_image_async(image_workspace, module, base_image=ref, cache=cache, push=False)

    no_stdlib = LayerWriter()
    no_stdlib.add_bytes("usr/bin/python3", b"\x7fELF", executable=True)
    ref = await _push_base(image_workspace, "bases/python-no-stdlib", no_stdlib, "3.11", cache)
    with pytest.raises(ImageBuildError, match=r"/usr/bin/python3 but no Python standard library"):
        await build_module_image_async(image_workspace, module, base_image=ref, cache=cache, push=False)


async def test_a_base_in_another_registry_is_copied_with_its_own_credentials(
    image_workspace: Workspace, distribution: Service, base_image_ref: str, iris_model: Model
) -> None:
    """Azure ML's `base_image_registry`: the base sits in another (here anonymous) registry."""
    async with image_workspace.registry_client() as source, RegistryClient(distribution.url) as target:
        manifest = await source.get_manifest("bases/modelfleet-python", "latest")
        body = manifest.json()
        for blob in [body["config"], *body["layers"]]:
            data_path = ImageCache().blob_path(blob["digest"])
            await target.push_blob(
                "mirror/python", data_path if data_path.is_file() else None, blob["digest"]
            )
        await target.put_manifest("mirror/python", "bookworm", manifest.body, manifest.media_type)
    module = await Module.package_async(
        image_workspace, _name("mirror"), [iris_model.name], entry_script=SERVICE_DIR / "score.py"
    )
    host = distribution.url.removeprefix("http://")
    image, _ = await build_module_image_async(
        image_workspace, module, base_image=f"{host}/mirror/python:bookworm"
    )
    assert image.base.startswith(f"{host}/mirror/python:bookworm@sha256:")
    async with image_workspace.registry_client() as client:
        pushed = json.loads((await client.get_manifest(image.repository, image.digest)).body)
        for layer in pushed["layers"]:
            assert await client.blob_exists(image.repository, layer["digest"])
