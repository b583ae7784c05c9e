"""The front proxy: version switch under load, and what it forwards."""

from __future__ import annotations

import asyncio
import hashlib
import time
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from multidict import CIMultiDict

from edge_agent._runtime import FrontProxy, ProcessRuntime
from tests.edge_agent.test_runtime_process import IRIS_SAMPLE, free_port, make_config, write_script

VERSIONED_SCRIPT = """
import glob, json, os
import numpy as np
import onnxruntime as ort

VERSION = {version!r}
session = None

def init():
    global session
    pattern = os.path.join(os.environ["AZUREML_MODEL_DIR"], "**", "model.onnx")
    path = sorted(glob.glob(pattern, recursive=True))[0]
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])

def run(raw_data):
    labels, _ = session.run(None, {{"input": np.asarray(json.loads(raw_data)["data"], dtype=np.float32)}})
    return {{"served_by": VERSION, "labels": [int(i) for i in labels]}}
"""


@pytest.fixture
async def proxy():
    proxy = FrontProxy("127.0.0.1", 0)
    await proxy.start()
    yield proxy
    await proxy.stop()


async def test_switching_versions_under_load_fails_no_request(proxy: FrontProxy, tmp_path: Path) -> None:
    runtime = ProcessRuntime(tmp_path / "agent")
    configs = {}
    for version in ("A", "B"):
        script = write_script(tmp_path / version, "score.py", VERSIONED_SCRIPT.format(version=version))
        configs[version] = make_config(f"iris-svc-{version.lower()}-1", script=script)
    instances = {v: await runtime.start(c) for v, c in configs.items()}
    try:
        for instance in instances.values():
            await runtime.wait_ready(instance, timeout=60)
        proxy.switch(configs["A"].port)

        switched_at: float | None = None
        results: list[tuple[float, int, str | None]] = []  # (sent at, status, served_by)
        stop_at = time.monotonic() + 2.0

        async def client(session: aiohttp.ClientSession) -> None:
            while time.monotonic() < stop_at:
                sent = time.monotonic()
                try:
                    async with session.post(f"http://127.0.0.1:{proxy.port}/score", json=IRIS_SAMPLE) as r:
                        body = await r.json(content_type=None)
                        results.append((sent, r.status, body.get("served_by")))
                except aiohttp.ClientError as exc:
                    results.append((sent, -1, repr(exc)))

        async def operator() -> None:
            nonlocal switched_at
            await asyncio.sleep(0.7)
            switched_at = time.monotonic()
            assert proxy.switch(configs["B"].port) == configs["A"].port
            # The old version goes only once its last request has been answered.
            await proxy.drained(configs["A"].port, timeout=10)
            await runtime.stop(instances["A"])

        async with aiohttp.ClientSession() as session:
            await asyncio.gather(*(client(session) for _ in range(4)), operator())
    finally:
        for instance in instances.values():
            await runtime.stop(instance)
        await runtime.close()

    failures = [r for r in results if r[1] != 200]
    assert not failures, failures[:5]
    assert switched_at is not None
    before = {served for sent, _, served in results if sent < switched_at}
    after = [served for sent, _, served in results if sent > switched_at]
    assert "A" in before
    assert after and set(after) == {"B"}
    assert instances["A"].returncode == 0


async def test_no_target_or_a_refusing_target_is_a_json_503(proxy: FrontProxy) -> None:
    async with aiohttp.ClientSession() as session:
        url = f"http://127.0.0.1:{proxy.port}/score"
        async with session.post(url, json={}) as response:
            assert response.status == 503
            assert "message" in await response.json()
        proxy.switch(free_port())  # nothing listens there
        async with session.get(url) as response:
            assert response.status == 503
            assert "not accepting connections" in (await response.json())["message"]


async def test_bodies_stream_through_and_hop_by_hop_headers_stay_behind(proxy: FrontProxy) -> None:
    seen: CIMultiDict[str] = CIMultiDict()

    async def echo(request: web.Request) -> web.StreamResponse:
        seen.extend(request.headers)
        response = web.StreamResponse(headers={"X-Upstream": "yes", "Keep-Alive": "timeout=99"})
        await response.prepare(request)
        async for chunk in request.content.iter_chunked(32 * 1024):
            await response.write(chunk)
        await response.write_eof()
        return response

    app = web.Application(client_max_size=64 << 20)
    app.router.add_post("/echo", echo)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    proxy.switch(port)
    payload = bytes(range(256)) * (12 * 1024)  # 3 MiB
    headers = {
        "Authorization": "Bearer client-key",
        "Connection": "keep-alive, X-Private-Hop",
        "X-Private-Hop": "drop me",
        "TE": "trailers",
        "X-Request-Id": "r-1",
    }
    try:
        async with (
            aiohttp.ClientSession() as session,
            session.post(f"http://127.0.0.1:{proxy.port}/echo", data=payload, headers=headers) as response,
        ):
            body = await response.read()
            assert response.status == 200
            assert response.headers["X-Upstream"] == "yes"
            assert "timeout=99" not in response.headers.get("Keep-Alive", "")
    finally:
        await runner.cleanup()
    assert hashlib.sha256(body).digest() == hashlib.sha256(payload).digest()
    assert seen["Authorization"] == "Bearer client-key"
    assert seen["X-Request-Id"] == "r-1"
    assert "X-Private-Hop" not in seen and "TE" not in seen
    assert proxy.in_flight(port) == 0
