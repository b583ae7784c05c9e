"""Does the agent's event loop keep serving during a large download?

The agent's front proxies (each module's public port) share the event loop with the artifact
store's downloads. This bench runs a FrontProxy and a blob download of `--mb` MiB (default 256)
in one event loop, as the agent does, and measures request latency through the proxy from a
separate client process: first idle, then while the download runs. It prints the p50/p99 of
both and the ratio download p99 / idle p99 (target: <= 2.0), medians over `--runs` runs.

Reference, measured in the same run: the idle latency through the same proxy.

    python bench/loop_during_download.py            # 3 runs, 256 MiB
    python bench/loop_during_download.py --runs 5 --mb 200

Services: the embedded hub (`modelfleet hub up`) as the registry, and a trivial HTTP backend,
both in their own processes on free loopback ports, started by the bench.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edge_agent._runtime import FrontProxy  # noqa: E402
from modules.oci import RegistryClient, sha256_bytes  # noqa: E402

BACKEND = """
import sys
from aiohttp import web
async def ok(_): return web.Response(text="ok")
app = web.Application(); app.router.add_get("/", ok)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None, access_log=None)
"""

CLIENT = """
import json, os, sys, time, urllib.request
url, stop_file = sys.argv[1], sys.argv[2]
latencies = []
while not os.path.exists(stop_file):
    start = time.perf_counter()
    with urllib.request.urlopen(url, timeout=10) as resp:
        resp.read()
    latencies.append((time.perf_counter() - start) * 1000)
    time.sleep(0.005)
print(json.dumps(latencies))
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def measure_while(
    url: str, work: Path, busy: asyncio.Future[object] | None, idle_s: float
) -> list[float]:
    """Latencies from a client process, for `idle_s` seconds or for as long as `busy` runs."""
    stop = work / f"stop-{time.monotonic_ns()}"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", CLIENT, url, str(stop), stdout=asyncio.subprocess.PIPE
    )
    if busy is None:
        await asyncio.sleep(idle_s)
    else:
        await busy
    stop.touch()
    out, _ = await proc.communicate()
    return json.loads(out)


async def one_run(
    registry: str, repo: str, digest: str, size: int, proxy_url: str, work: Path
) -> tuple[list[float], list[float], float]:
    idle = await measure_while(proxy_url, work, None, 5.0)
    dest = work / f"blob-{time.monotonic_ns()}"
    async with RegistryClient(registry) as client:
        started = time.monotonic()
        download = asyncio.ensure_future(client.download_blob(repo, digest, dest, size=size))
        busy = await measure_while(proxy_url, work, download, 0.0)
        took = time.monotonic() - started
    dest.unlink()
    return idle, busy, took


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--mb", type=int, default=256)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        registry_port, mqtt_port, backend_port = free_port(), free_port(), free_port()
        hub = subprocess.Popen(
            [sys.executable, "-m", "modules.cli", "hub", "up", "--data-dir", str(work / "hub"),
             "--registry-port", str(registry_port), "--mqtt-port", str(mqtt_port)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
        backend = subprocess.Popen([sys.executable, "-c", BACKEND, str(backend_port)], start_new_session=True)
        try:
            wait_port(registry_port)
            wait_port(backend_port)
            registry = f"http://127.0.0.1:{registry_port}"
            payload = os.urandom(args.mb << 20)
            digest = sha256_bytes(payload)
            async with RegistryClient(registry) as client:
                await client.push_blob("bench/big", payload)
            del payload
            proxy = FrontProxy("127.0.0.1", 0)
            await proxy.start()
            proxy.switch(backend_port)
            proxy_url = f"http://127.0.0.1:{proxy.port}/"
            rows = []
            for run in range(args.runs):
                idle, busy, took = await one_run(
                    registry, "bench/big", digest, args.mb << 20, proxy_url, work
                )
                row = (
                    percentile(idle, 0.5),
                    percentile(idle, 0.99),
                    percentile(busy, 0.5),
                    percentile(busy, 0.99),
                )
                rows.append(row)
                print(
                    f"run {run + 1}: download {args.mb} MiB in {took:.1f} s; idle p50 {row[0]:.2f} ms "
                    f"p99 {row[1]:.2f} ms ({len(idle)} req); during download p50 {row[2]:.2f} ms "
                    f"p99 {row[3]:.2f} ms ({len(busy)} req); p99 ratio {row[3] / row[1]:.2f}"
                )
            await proxy.stop()
            med = [statistics.median(r[i] for r in rows) for i in range(4)]
            print(
                f"\nmedians over {args.runs} runs: idle p99 {med[1]:.2f} ms, during a {args.mb} MiB "
                f"download p99 {med[3]:.2f} ms: ratio {med[3] / med[1]:.2f} (target <= 2.0)"
            )
        finally:
            for proc in (hub, backend):
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(timeout=10)


if __name__ == "__main__":
    asyncio.run(main())
