"""Module images: modelfleet's daemon-less build against a conventional Dockerfile built by the engine.

For the iris sample module (score.py, numpy requirement, the scoring host with onnxruntime) on the
same base image (`modelfleet image base`), one run each:

- build time: from a published module to an image in the registry (modelfleet: an empty layer
  cache, then the model-only update with the cache; engine: `docker build --no-cache` + `docker
  push`, then the update with the engine's build cache);
- image size: compressed bytes of all layers, as pushed;
- bytes a device that runs version 1 pulls for a model-only update, counted on the wire by a
  proxy in front of the registry while the engine pulls.

The reference Dockerfile is the common one: `COPY . /var/azureml-app`, then one `RUN pip install`
(from a loopback wheel index: nothing leaves the machine), so a new model invalidates the pip layer.

    python bench/image_build.py

Needs root, dockerd and debootstrap (as `make test`); the first run on a machine builds the base.
"""

from __future__ import annotations

import asyncio
import functools
import http.server
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import onnx  # noqa: E402
from aiohttp import web  # noqa: E402
from multidict import CIMultiDict  # noqa: E402

from modules.image import ImageCache, runtime_distributions  # noqa: E402
from publisher import Model, Module, Workspace  # noqa: E402
from publisher._image import build_base_image, build_module_image_async, push_base_image  # noqa: E402
from tests._docker import DockerEngine, run_docker_engine  # noqa: E402
from tests._services import run_distribution  # noqa: E402

IRIS = ROOT / "examples" / "models" / "iris" / "model.onnx"
SCORE = ROOT / "examples" / "iris-service" / "score.py"
_HOP = {"host", "content-length", "transfer-encoding", "connection"}


class CountingProxy:
    """Bytes the registry sends through it, in its own thread and loop."""

    def __init__(self, upstream: str) -> None:
        self.upstream, self.bytes, self.url = upstream, 0, ""
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, daemon=True).start()

    async def _handle(self, request: web.Request) -> web.Response:
        import aiohttp

        body = await request.read()
        headers = CIMultiDict((k, v) for k, v in request.headers.items() if k.lower() not in _HOP)
        async with (
            aiohttp.ClientSession(auto_decompress=False) as session,
            session.request(
                request.method,
                self.upstream + request.path_qs,
                headers=headers,
                data=body or None,
                allow_redirects=False,
            ) as up,
        ):
            payload = await up.read()
            out = CIMultiDict((k, v) for k, v in up.headers.items() if k.lower() not in _HOP)
        self.bytes += len(payload)
        return web.Response(status=up.status, headers=out, body=payload)

    async def _start(self) -> None:
        app = web.Application(client_max_size=1 << 30)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"127.0.0.1:{site._server.sockets[0].getsockname()[1]}"  # type: ignore[union-attr]

    def start(self) -> str:
        asyncio.run_coroutine_threadsafe(self._start(), self.loop).result()
        return self.url


def pulled_bytes(engine: DockerEngine, registry: str, first: str, second: str) -> int:
    """Pull `first` directly, then `second` through a counting proxy: what the update moves."""
    engine.run("pull", f"{registry}/{first}")
    proxy = CountingProxy(f"http://{registry}")
    host = proxy.start()
    engine.run("pull", f"{host}/{second}")
    return proxy.bytes


def image_size(manifest: dict[str, Any]) -> int:
    return sum(layer["size"] for layer in manifest["layers"]) + manifest["config"]["size"]


async def manifest_of(ws: Workspace, repository: str, reference: str) -> dict[str, Any]:
    async with ws.registry_client() as client:
        return json.loads((await client.get_manifest(repository, reference)).body)


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # one line per wheel is noise here
        pass


def wheel_index(folder: Path) -> tuple[str, http.server.ThreadingHTTPServer]:
    """The runtime's pinned wheels (and pip) served on loopback, like a package index."""
    versions = runtime_distributions().versions()
    pins = [f"{n}=={v}" for n, v in versions.items()] + ["pip"]
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "-q",
            "--only-binary=:all:",
            "--no-deps",
            "-d",
            str(folder),
            *pins,
        ],
        check=True,
    )
    handler = functools.partial(_QuietHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    pip_wheel = next(folder.glob("pip-*.whl")).name
    return f"http://127.0.0.1:{server.server_address[1]}/{pip_wheel}", server


DOCKERFILE = """FROM {base}
COPY . /var/azureml-app
RUN python3 -c "import urllib.request as u; u.urlretrieve('{pip}', '/tmp/pip.whl')" \\
 && python3 /tmp/pip.whl/pip install -q --no-cache-dir --no-index --find-links {index} \\
      --target /opt/site -r /var/azureml-app/requirements.txt \\
 && rm /tmp/pip.whl
ENV PYTHONPATH=/opt/site:/var/azureml-app MODELFLEET_PORT=5001 MODELFLEET_SCORING_SETTINGS='{settings}'
WORKDIR /var/azureml-app/code
ENTRYPOINT ["/usr/bin/python3", "-m", "modules.image.entrypoint"]
"""


def engine_context(folder: Path, model: Path, version: int, model_name: str) -> None:
    """The usual build context: code, model, the modelfleet package and a requirements file."""
    shutil.rmtree(folder, ignore_errors=True)
    (folder / "code").mkdir(parents=True)
    shutil.copy(SCORE, folder / "code" / "score.py")
    target = folder / "azureml-models" / model_name / str(version)
    target.mkdir(parents=True)
    shutil.copy(model, target / "model.onnx")
    shutil.copytree(ROOT / "modules", folder / "modules", ignore=shutil.ignore_patterns("__pycache__"))
    pins = [f"{n}=={v}" for n, v in runtime_distributions().versions().items()]
    (folder / "requirements.txt").write_text("\n".join([*pins, "numpy"]) + "\n")


def engine_build(engine: DockerEngine, folder: Path, tag: str, **fmt: str) -> float:
    (folder / "Dockerfile").write_text(DOCKERFILE.format(**fmt))
    start = time.perf_counter()
    engine.run("build", "--network", "host", "-q", "-t", tag, str(folder), timeout=900)
    engine.run("push", tag, timeout=600)
    return time.perf_counter() - start


def main() -> int:
    work = Path(tempfile.mkdtemp(prefix="modelfleet-bench-image-"))
    try:
        return asyncio.run(run(work))
    finally:
        shutil.rmtree(work, ignore_errors=True)


async def run(work: Path) -> int:
    t0 = time.perf_counter()
    base = build_base_image()
    origin = "cached" if base.cached else f"built in {time.perf_counter() - t0:.0f} s"
    print(
        f"base image: {base.layer.size / 2**20:.1f} MiB compressed, "
        f"{base.unpacked_bytes / 2**20:.1f} MiB unpacked ({origin})"
    )
    with run_distribution(work / "registry") as registry, run_docker_engine(work / "docker") as engine:
        host = registry.url.removeprefix("http://")
        ws = Workspace.create(work / "ws", registry=registry.url)
        base_ref = await asyncio.to_thread(push_base_image, ws, base)
        model = await Model.register_async(ws, IRIS, "iris")
        v1 = await Module.package_async(ws, "iris-svc", ["iris:1"], entry_script=SCORE, requirements=None)
        changed = onnx.load(IRIS)
        changed.doc_string = "retrained"
        onnx.save(changed, work / "model-v2.onnx")
        await Model.register_async(ws, work / "model-v2.onnx", "iris")
        v2 = await Module.package_async(ws, "iris-svc", ["iris:2"], entry_script=SCORE)

        cache = ImageCache(work / "cache")
        start = time.perf_counter()
        first, built = await build_module_image_async(ws, v1, cache=cache)
        mf_cold = time.perf_counter() - start
        start = time.perf_counter()
        second, _ = await build_module_image_async(ws, v2, cache=cache)
        mf_update = time.perf_counter() - start
        mf_size = image_size(await manifest_of(ws, first.repository, first.digest))
        mf_pulled = await asyncio.to_thread(
            pulled_bytes,
            engine,
            host,
            f"{first.repository}@{first.digest}",
            f"{second.repository}@{second.digest}",
        )

        pip_url, server = await asyncio.to_thread(wheel_index, work / "wheels")
        index = pip_url.rsplit("/", 1)[0] + "/"
        settings = json.loads(dict(e.split("=", 1) for e in json.loads(built.config)["config"]["Env"])[
            "MODELFLEET_SCORING_SETTINGS"
        ])  # fmt: skip
        fmt = {"base": f"{host}/{base_ref}", "pip": pip_url, "index": index, "settings": json.dumps(settings)}
        await asyncio.to_thread(engine.run, "pull", fmt["base"])
        context = work / "context"
        engine_context(context, IRIS, 1, model.name)
        en_cold = await asyncio.to_thread(
            engine_build, engine, context, f"{host}/dockerfile/iris-svc:1", **fmt
        )
        engine_context(context, work / "model-v2.onnx", 2, model.name)
        fmt["settings"] = json.dumps({**settings, "model_dir": settings["model_dir"].replace("/1", "/2")})
        en_update = await asyncio.to_thread(
            engine_build, engine, context, f"{host}/dockerfile/iris-svc:2", **fmt
        )
        server.shutdown()
        en_size = image_size(await manifest_of(ws, "dockerfile/iris-svc", "1"))
        await asyncio.to_thread(
            engine.run, "rmi", "-f", f"{host}/dockerfile/iris-svc:1", f"{host}/dockerfile/iris-svc:2"
        )
        async with ws.registry_client() as client:  # by digest, as devices pull
            d1, d2 = [await client.manifest_digest("dockerfile/iris-svc", t) for t in ("1", "2")]
        en_pulled = await asyncio.to_thread(
            pulled_bytes, engine, host, f"dockerfile/iris-svc@{d1}", f"dockerfile/iris-svc@{d2}"
        )

    def mib(n: float) -> str:
        return f"{n / 2**20:8.2f} MiB"

    rows = [
        ("build, empty caches (s)", f"{mf_cold:8.1f} s", f"{en_cold:8.1f} s", en_cold / mf_cold),
        ("build, model-only update (s)", f"{mf_update:8.1f} s", f"{en_update:8.1f} s", en_update / mf_update),
        ("image size, compressed", mib(mf_size), mib(en_size), en_size / mf_size),
        ("pulled for a model-only update", mib(mf_pulled), mib(en_pulled), en_pulled / max(mf_pulled, 1)),
    ]
    print(f"\n{'':34}{'modelfleet':>14}{'Dockerfile':>14}   engine / modelfleet")
    for label, a, b, ratio in rows:
        print(f"{label:34}{a:>14}{b:>14}   {ratio:8.2f}x")
    print(f"\nmodel-only update, bytes pulled: modelfleet {mf_pulled}, Dockerfile {en_pulled}")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONDONTWRITEBYTECODE", "1")
    sys.exit(main())
