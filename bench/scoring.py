"""Scoring throughput: modelfleet's host against a bare ceiling and two reference servers, same run.

All serve the same ONNX model (examples/models/cnn) and, where a server takes an entry script,
the same one (bench/cnn_score.py); one load generator (wrk, else ApacheBench `ab -k`, else an
asyncio client in its own process) drives each in turn at the same concurrency, warm-up and
duration, with the same body. Servers run one at a time so they never compete for the CPU.

    python bench/scoring.py                     # 5 runs x 5 s per configuration
    python bench/scoring.py --runs 3 --seconds 3
    python bench/scoring.py --only "ceiling|entry script, c=8"   # rows whose label holds one
    python bench/scoring.py --client ab         # ab -k (or python) instead of wrk

Rows:
- "ceiling": a bare aiohttp handler on uvloop that parses with orjson, runs the script's ONNX
  session inline on the event loop and writes with orjson, in as many processes as modelfleet
  serve starts (SO_REUSEPORT): no auth, no timeout, no metrics, no request ids, nothing kept
  off the loop. What the host is measured against; "ceiling, asyncio loop" is the same without
  uvloop.
- azureml-inference-server-http 1.5.1 (its own venv, as the scoring tests build it): with its
  defaults (WORKER_COUNT=1, one gunicorn sync worker) and with WORKER_COUNT = modelfleet's
  process count. Only AZUREML_LOG_LEVEL=WARNING is set, which spares it log lines.
- MLServer 1.7.1 (its own venv) over the Open Inference Protocol v2, with a runtime that runs the
  same ONNX file through ONNX Runtime (one intra-op thread, as the script), `parallel_workers` 0
  (inference in the server's own process) and 2; against modelfleet's zero-code host on the same
  v2 route and body.
- modelfleet as `modelfleet serve` with its defaults (processes = CPUs, inference threads
  shared out over them, the script's json.loads through the host's exact fast parser, tiny
  `POST /score` runs answered on the fast path below aiohttp's request objects); the "script json
  stdlib" row turns that parser off for the script, the "fast path off" row sends every request
  through aiohttp's request objects, and the batching row turns on a non-default setting; all
  are labelled so.
The client's own CPU use is printed per row ("client cpu", in cores) to show what it takes, and
so is the servers' CPU time per request ("server us/req", all of a server's processes): on a
machine shared with other work a server's throughput follows the CPU share it is given, its CPU
time per request much less so.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
WORK = BENCH / ".venvs"
MODEL_DIR = ROOT / "examples" / "models" / "cnn"
SCRIPT = BENCH / "cnn_score.py"
# uvloop as of MLServer 1.7.1's release: its worker processes call asyncio.get_event_loop() without a
# loop, which uvloop 0.22 and later refuse.
MLSERVER_PACKAGES = ("mlserver==1.7.1", "uvloop==0.21.0", "onnxruntime", "numpy")
CLIENT = "wrk" if shutil.which("wrk") else "ab" if shutil.which("ab") else "python"


@dataclass
class Server:
    label: str
    argv: list[str]
    env: dict[str, str]
    concurrency: int
    path: str = "/score"
    body: str = "azureml"  # which body file: "azureml" ({"data": ...}) or "v2" (an infer request)
    cwd: Path = field(default_factory=lambda: ROOT)


def reference_python(name: str, packages: tuple[str, ...]) -> Path:
    """The reference servers' venvs are the scoring tests' own (built once, cached, keyed by
    what they hold), so the bench measures the same installs the differential tests compare."""
    sys.path.insert(0, str(ROOT))
    from tests.scoring._reference_envs import reference_python as build

    return build(name, packages)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until_scoring(url: str, body: bytes, process: subprocess.Popen, timeout: float = 120):
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}")
        try:
            request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(request, timeout=5) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, OSError):
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} never answered 200")


# ---------------------------------------------------------------- the ceiling (bare aiohttp)


def serve_ceiling(port: int, processes: int, loop_kind: str) -> None:
    """A bare aiohttp handler: orjson in and out, the script's session run inline on the loop.

    Each process binds its own SO_REUSEPORT socket, so the kernel spreads connections over them
    without the accept herd a shared socket has.
    """
    for _ in range(processes - 1):
        if os.fork() == 0:
            break
    import importlib.util

    import numpy as np
    import orjson
    from aiohttp import web

    os.environ["AZUREML_MODEL_DIR"] = str(MODEL_DIR)
    spec = importlib.util.spec_from_file_location("cnn_score", SCRIPT)
    assert spec is not None and spec.loader is not None
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    script.init()
    session = script.session

    async def score(request: web.Request) -> web.Response:
        data = np.asarray(orjson.loads(await request.read())["data"], dtype=np.float32)
        (probabilities,) = session.run(None, {"input": data})
        return web.Response(
            body=orjson.dumps({"probabilities": probabilities.tolist()}), content_type="application/json"
        )

    async def main() -> None:
        app = web.Application()
        app.router.add_post("/score", score)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(("127.0.0.1", port))
        await web.SockSite(runner, sock).start()
        await asyncio.Event().wait()

    if loop_kind == "uvloop":
        import uvloop

        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(main())
    else:
        asyncio.run(main())


# ---------------------------------------------------------------- MLServer


MLSERVER_RUNTIME = """
import numpy as np
import onnxruntime as ort
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse


class CnnRuntime(MLModel):
    async def load(self) -> bool:
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        self._session = ort.InferenceSession(
            self.settings.parameters.uri, options, providers=["CPUExecutionProvider"]
        )
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        data = NumpyCodec.decode_input(payload.inputs[0]).astype(np.float32, copy=False)
        (probabilities,) = self._session.run(None, {"input": data})
        return InferenceResponse(
            model_name=self.name, outputs=[NumpyCodec.encode_output("probabilities", probabilities)]
        )
"""


def mlserver_folder(parallel_workers: int) -> Path:
    """A model repository for `mlserver start`: the runtime, the model's settings, the server's."""
    folder = WORK / f"mlserver-cnn-{parallel_workers}"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "cnn_runtime.py").write_text(MLSERVER_RUNTIME)
    model = {
        "name": "cnn",
        "implementation": "cnn_runtime.CnnRuntime",
        "parameters": {"uri": str(MODEL_DIR / "model.onnx")},
    }
    (folder / "model-settings.json").write_text(json.dumps(model))
    return folder


def mlserver_settings(folder: Path, parallel_workers: int) -> None:
    settings = {
        "host": "127.0.0.1",
        "http_port": 0,  # replaced per run
        "grpc_port": 0,
        "metrics_port": 0,
        "parallel_workers": parallel_workers,
        "debug": False,
    }
    (folder / "settings.template.json").write_text(json.dumps(settings))


# ---------------------------------------------------------------- load generators


async def _load(url: str, body: bytes, concurrency: int, seconds: float, warmup: float) -> dict:
    import aiohttp

    latencies: list[float] = []
    errors = 0
    headers = {"Content-Type": "application/json"}
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        measuring_from = time.perf_counter() + warmup
        stop_at = measuring_from + seconds

        async def worker() -> None:
            nonlocal errors
            while True:
                started = time.perf_counter()
                if started >= stop_at:
                    return
                async with session.post(url, data=body, headers=headers) as response:
                    await response.read()
                    ok = response.status == 200
                finished = time.perf_counter()
                if started >= measuring_from:
                    if ok:
                        latencies.append(finished - started)
                    else:
                        errors += 1

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    latencies.sort()
    count = len(latencies)
    return {
        "requests": count,
        "errors": errors,
        "throughput": count / seconds,
        "p50_ms": 1000 * latencies[count // 2] if count else float("nan"),
        "p99_ms": 1000 * latencies[min(count - 1, int(count * 0.99))] if count else float("nan"),
    }


CpuClock = Callable[[], float]


def _children_cpu() -> float:
    times = os.times()
    return times.children_user + times.children_system


def run_ab(url: str, body_file: Path, concurrency: int, seconds: float, server_cpu: CpuClock) -> dict:
    """ApacheBench (C, keep-alive): leaves the CPU to the servers on a small machine."""
    base = [
        "ab",
        "-q",
        "-k",
        "-c",
        str(concurrency),
        "-n",
        "100000000",
        "-p",
        str(body_file),
        "-T",
        "application/json",
    ]
    subprocess.run([*base, "-t", "1", url], check=True, capture_output=True)  # warm-up
    csv = body_file.with_suffix(".percentiles.csv")
    before, server_before = _children_cpu(), server_cpu()
    out = subprocess.run(
        [*base, "-t", str(seconds), "-e", str(csv), url], check=True, capture_output=True, text=True
    ).stdout
    client_cpu, server_used = _children_cpu() - before, server_cpu() - server_before
    fields = {}
    for line in out.splitlines():
        key, _, value = line.partition(":")
        fields[key.strip()] = value.strip()
    percentiles = {}
    for line in csv.read_text().splitlines()[1:]:
        percent, _, millis = line.partition(",")
        percentiles[int(float(percent))] = float(millis)
    failed = int(fields["Failed requests"].split()[0]) + int(fields.get("Non-2xx responses", "0").split()[0])
    requests = int(fields["Complete requests"])
    return {
        "requests": requests,
        "server_us": 1e6 * server_used / requests if requests else float("nan"),
        "errors": failed,
        "throughput": float(fields["Requests per second"].split()[0]),
        "p50_ms": percentiles[50],
        "p99_ms": percentiles[99],
        "client_cpu": client_cpu / seconds,
    }


_WRK_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def _wrk_ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s)", text)
    if match is None:
        raise ValueError(f"unexpected wrk latency {text!r}")
    return float(match.group(1)) * _WRK_UNITS[match.group(2)]


def run_wrk(url: str, body_file: Path, concurrency: int, seconds: float, server_cpu: CpuClock) -> dict:
    """wrk (C, keep-alive, HTTP/1.1), one thread: the reference load generator."""
    script = body_file.with_suffix(".wrk.lua")
    script.write_text(
        'wrk.method = "POST"\n'
        'wrk.headers["Content-Type"] = "application/json"\n'
        f"local f = io.open({json.dumps(str(body_file))}, 'rb')\n"
        "wrk.body = f:read('*a')\n"
        "f:close()\n"
    )
    base = ["wrk", "-t1", f"-c{concurrency}", "-s", str(script)]
    subprocess.run([*base, "-d1s", url], check=True, capture_output=True)  # warm-up
    before, server_before = _children_cpu(), server_cpu()
    out = subprocess.run(
        [*base, "--latency", f"-d{seconds:g}s", url], check=True, capture_output=True, text=True
    ).stdout
    client_cpu, server_used = _children_cpu() - before, server_cpu() - server_before
    requests = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    percentiles = dict(re.findall(r"^\s+(\d+)%\s+(\S+)$", out, re.MULTILINE))
    errors = sum(int(n) for n in re.findall(r"Non-2xx or 3xx responses: (\d+)", out))
    socket_errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if socket_errors:
        errors += sum(int(n) for n in socket_errors.groups())
    return {
        "requests": requests,
        "server_us": 1e6 * server_used / requests if requests else float("nan"),
        "errors": errors,
        "throughput": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),  # type: ignore[union-attr]
        "p50_ms": _wrk_ms(percentiles["50"]),
        "p99_ms": _wrk_ms(percentiles["99"]),
        "client_cpu": client_cpu / seconds,
    }


def run_load(url: str, body_file: Path, concurrency: int, seconds: float, server_cpu: CpuClock) -> dict:
    if CLIENT == "wrk":
        return run_wrk(url, body_file, concurrency, seconds, server_cpu)
    if CLIENT == "ab":
        return run_ab(url, body_file, concurrency, seconds, server_cpu)
    result = subprocess.run(
        [sys.executable, __file__, "--load", url, str(body_file), str(concurrency), str(seconds)],
        check=True,
        capture_output=True,
        text=True,
    )
    # Its warm-up runs inside the subprocess, so the server's CPU per request is not known.
    return {"client_cpu": float("nan"), "server_us": float("nan"), **json.loads(result.stdout)}


# ---------------------------------------------------------------- orchestration


def start(server: Server, body: bytes) -> tuple[subprocess.Popen, str]:
    port = free_port()
    argv = [part.replace("{port}", str(port)) for part in server.argv]
    if "{mlserver}" in argv:  # MLServer reads its ports from the folder it serves
        folder = Path(argv[argv.index("{mlserver}") - 1])
        settings = json.loads((folder / "settings.template.json").read_text())
        settings.update(http_port=port, grpc_port=free_port(), metrics_port=free_port())
        (folder / "settings.json").write_text(json.dumps(settings))
        argv.remove("{mlserver}")
    log = WORK / "server.log"  # the last server's output, for when one does not come up
    with log.open("wb") as output:
        process = subprocess.Popen(
            argv,
            cwd=server.cwd,
            env={**os.environ, **server.env},
            stdout=subprocess.DEVNULL,
            stderr=output,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}{server.path}"
    try:
        wait_until_scoring(url, body, process)
    except BaseException:
        stop(process)
        print(f"{server.label}: {log.read_text(errors='replace')[-3000:]}", file=sys.stderr)
        raise
    return process, url


def stop(process: subprocess.Popen) -> None:
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def session_cpu(session: int) -> float:
    """CPU seconds used so far by the live processes of a session (a server and its workers).

    On a shared machine a server's throughput follows the CPU share it gets; CPU time per
    request does not, so it is printed beside throughput (Linux /proc; NaN elsewhere).
    """
    total = 0
    try:
        pids = [name for name in os.listdir("/proc") if name.isdigit()]
    except OSError:
        return float("nan")
    for pid in pids:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        if int(fields[3]) == session:
            total += int(fields[11]) + int(fields[12])
    return total / _TICKS


def measure(server: Server, body_file: Path, rounds: int, seconds: float) -> list[dict]:
    process, url = start(server, body_file.read_bytes())
    try:
        clock = functools.partial(session_cpu, process.pid)
        return [run_load(url, body_file, server.concurrency, seconds, clock) for _ in range(rounds)]
    finally:
        stop(process)


def summarise(results: list[dict]) -> dict:
    keys = ("throughput", "p50_ms", "p99_ms", "client_cpu", "server_us")
    summary = {key: statistics.median(r[key] for r in results) for key in keys}
    summary["errors"] = sum(r["errors"] for r in results)
    summary["runs"] = [round(r["throughput"], 1) for r in results]
    return summary


def processes_here() -> int:
    """What `modelfleet serve` starts by default: one process per CPU this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)


def write_bodies() -> dict[str, Path]:
    """The Azure ML body (the model's sample) and the same image as a v2 infer request."""
    WORK.mkdir(parents=True, exist_ok=True)
    (WORK / ".gitignore").write_text("*\n")
    sample = (MODEL_DIR / "sample-input.json").read_text()
    azureml = WORK / "cnn-body.json"
    azureml.write_text(sample)
    import numpy as np

    data = np.asarray(json.loads(sample)["data"], dtype=np.float64)
    request = {
        "inputs": [
            {"name": "input", "shape": list(data.shape), "datatype": "FP32", "data": data.ravel().tolist()}
        ]
    }
    v2 = WORK / "cnn-body-v2.json"
    v2.write_text(json.dumps(request))
    return {"azureml": azureml, "v2": v2}


def build_servers(processes: int, compare_root: Path | None) -> list[Server]:
    azureml_python = reference_python(
        "azureml", ("azureml-inference-server-http==1.5.1", "onnxruntime", "numpy", "pillow", "pandas")
    )
    azmlinfsrv = [
        str(azureml_python),
        "-m",
        "azureml_inference_server_http.amlserver",
        "--entry_script",
        str(SCRIPT),
        "--model_dir",
        str(MODEL_DIR),
        "--port",
        "{port}",
    ]
    modelfleet = [
        sys.executable,
        "-m",
        "modules.cli",
        "serve",
        "--model-dir",
        str(MODEL_DIR),
        "--port",
        "{port}",
        "--provider",
        "cpu",
    ]
    quiet = {"AZUREML_LOG_LEVEL": "WARNING"}
    # The host's fast json.loads for the script turned off: what the rest of the host gives.
    stdlib_json = {"MODELFLEET_SCRIPT_JSON": "stdlib"}
    # Every request through aiohttp's request objects, as before the fast path for POST /score.
    fast_path_off = {"MODELFLEET_FAST_PATH": "0"}
    entry = [*modelfleet, "--entry-script", str(SCRIPT)]
    ceiling = [sys.executable, __file__, "--ceiling", "{port}", str(processes)]
    mlserver_python = reference_python("mlserver", MLSERVER_PACKAGES)
    mlserver = []
    for workers in (0, 2):
        folder = mlserver_folder(workers)
        mlserver_settings(folder, workers)
        mlserver.append(
            Server(
                f"mlserver 1.7.1, v2, parallel_workers {workers}, c=8",
                [str(mlserver_python.parent / "mlserver"), "start", str(folder), "{mlserver}"],
                {},
                8,
                path="/v2/models/cnn/infer",
                body="v2",
            )
        )
    servers = [
        Server("ceiling: bare aiohttp, uvloop, orjson, inline, c=8", [*ceiling, "uvloop"], {}, 8),
        Server("ceiling, asyncio loop, c=8", [*ceiling, "asyncio"], {}, 8),
        Server("azureml 1.5.1, entry script, c=8", azmlinfsrv, quiet, 8),
        Server(
            f"azureml 1.5.1, entry script, {processes} workers, c=8",
            azmlinfsrv,
            {**quiet, "WORKER_COUNT": str(processes)},
            8,
        ),
        Server("modelfleet, entry script, c=8", entry, {}, 8),
        Server("modelfleet, entry script, 1 process, c=8", [*entry, "--processes", "1"], {}, 8),
        Server("modelfleet, entry script, script json stdlib, c=8", entry, stdlib_json, 8),
        Server("modelfleet, entry script, fast path off, c=8", entry, fast_path_off, 8),
        Server("modelfleet, zero-code ONNX, c=8", modelfleet, {}, 8),
        Server(
            "modelfleet, zero-code ONNX, v2, c=8", modelfleet, {}, 8, path="/v2/models/cnn/infer", body="v2"
        ),
        *mlserver,
        Server("azureml 1.5.1, entry script, c=32", azmlinfsrv, quiet, 32),
        Server(
            f"azureml 1.5.1, entry script, {processes} workers, c=32",
            azmlinfsrv,
            {**quiet, "WORKER_COUNT": str(processes)},
            32,
        ),
        Server("modelfleet, entry script, c=32", entry, {}, 32),
        Server("modelfleet, zero-code ONNX, c=32", modelfleet, {}, 32),
        Server(
            "modelfleet, zero-code + batching 32/2ms, c=32",
            [*modelfleet, "--max-batch-size", "32", "--max-batch-wait-ms", "2"],
            {},
            32,
        ),
    ]
    if compare_root is not None:
        # The same modelfleet rows served from another checkout (e.g. before a change), same run.
        for server in list(servers):
            if server.label.startswith("modelfleet,"):
                label = server.label.replace("modelfleet,", "modelfleet@compare,", 1)
                servers.append(
                    Server(
                        label,
                        server.argv,
                        server.env,
                        server.concurrency,
                        server.path,
                        server.body,
                        compare_root,
                    )
                )
    return servers


# (label of ours, label of theirs, what the line says); rows not run are left out.
def ratio_lines(processes: int) -> list[tuple[str, str, str]]:
    workers = f"{processes} workers"
    return [
        (
            "modelfleet, entry script, c=8",
            "ceiling: bare aiohttp, uvloop, orjson, inline, c=8",
            "c=8  entry script vs the ceiling",
        ),
        (
            "ceiling, asyncio loop, c=8",
            "ceiling: bare aiohttp, uvloop, orjson, inline, c=8",
            "c=8  ceiling without uvloop vs with",
        ),
        (
            "modelfleet, entry script, c=8",
            "modelfleet, entry script, fast path off, c=8",
            "c=8  entry script, fast path on vs off",
        ),
        (
            "modelfleet, entry script, c=8",
            "azureml 1.5.1, entry script, c=8",
            "c=8  entry script vs azureml (its default, 1 worker)",
        ),
        (
            "modelfleet, entry script, c=8",
            f"azureml 1.5.1, entry script, {workers}, c=8",
            f"c=8  entry script vs azureml, {workers}",
        ),
        ("modelfleet, zero-code ONNX, c=8", "azureml 1.5.1, entry script, c=8", "c=8  zero-code vs azureml"),
        (
            "modelfleet, entry script, 1 process, c=8",
            "azureml 1.5.1, entry script, c=8",
            "c=8  entry, 1 proc vs azureml 1 worker",
        ),
        (
            "modelfleet, entry script, script json stdlib, c=8",
            "azureml 1.5.1, entry script, c=8",
            "c=8  entry, stdlib json in the script vs azureml",
        ),
        (
            "modelfleet, zero-code ONNX, v2, c=8",
            "mlserver 1.7.1, v2, parallel_workers 0, c=8",
            "c=8  v2 vs mlserver, parallel_workers 0",
        ),
        (
            "modelfleet, zero-code ONNX, v2, c=8",
            "mlserver 1.7.1, v2, parallel_workers 2, c=8",
            "c=8  v2 vs mlserver, parallel_workers 2",
        ),
        (
            "modelfleet, entry script, c=32",
            "azureml 1.5.1, entry script, c=32",
            "c=32 entry script vs azureml",
        ),
        (
            "modelfleet, entry script, c=32",
            f"azureml 1.5.1, entry script, {workers}, c=32",
            f"c=32 entry script vs azureml, {workers}",
        ),
        (
            "modelfleet, zero-code ONNX, c=32",
            "azureml 1.5.1, entry script, c=32",
            "c=32 zero-code vs azureml",
        ),
        (
            "modelfleet, zero-code + batching 32/2ms, c=32",
            "azureml 1.5.1, entry script, c=32",
            "c=32 batching vs azureml",
        ),
        (
            "modelfleet, zero-code + batching 32/2ms, c=32",
            "modelfleet, zero-code ONNX, c=32",
            "c=32 batching vs the same host without it",
        ),
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="rounds; each starts every server afresh")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--client", choices=["wrk", "ab", "python"], default=CLIENT)
    parser.add_argument("--only", help="'|'-separated words; run the rows whose label holds one")
    parser.add_argument("--compare-root", type=Path, help="also serve the modelfleet rows from this checkout")
    parser.add_argument("--load", nargs=4, help=argparse.SUPPRESS)
    parser.add_argument("--ceiling", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    globals()["CLIENT"] = args.client
    if args.load:
        url, body_file, concurrency, seconds = args.load
        result = asyncio.run(_load(url, Path(body_file).read_bytes(), int(concurrency), float(seconds), 1.0))
        print(json.dumps(result))
        return 0
    if args.ceiling:
        port, processes, loop_kind = args.ceiling
        serve_ceiling(int(port), int(processes), loop_kind)
        return 0

    processes = processes_here()
    bodies = write_bodies()
    servers = build_servers(processes, args.compare_root)
    if args.only:
        words = [word.strip() for word in args.only.split("|") if word.strip()]
        servers = [s for s in servers if any(word in s.label.replace("@compare", "") for word in words)]
    print(
        f"CNN {MODEL_DIR.relative_to(ROOT)}, {os.cpu_count()} CPUs, "
        f"{args.runs} rounds x {args.seconds:g} s per row (each round starts every server afresh, "
        f"in turn), load generator: {args.client}, medians\n"
    )
    print(f"modelfleet defaults here: {processes} processes (modelfleet serve --processes)")
    # Rounds: every server once per round, so slow drifts of a shared machine hit all rows alike.
    per_round: dict[str, list[dict]] = {server.label: [] for server in servers}
    for round_number in range(args.runs):
        for server in servers:
            per_round[server.label] += measure(server, bodies[server.body], 1, args.seconds)
        print(f"round {round_number + 1}/{args.runs} done", file=sys.stderr, flush=True)
    print(
        f"{'server':<56} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'client cpu':>10} "
        f"{'server us/req':>13}  runs (req/s)"
    )
    results = {label: summarise(rows) for label, rows in per_round.items()}
    for server in servers:
        summary = results[server.label]
        errors = f"  errors={summary['errors']}" if summary["errors"] else ""
        print(
            f"{server.label:<56} {summary['throughput']:>8.1f} {summary['p50_ms']:>8.2f} "
            f"{summary['p99_ms']:>8.2f} {summary['client_cpu']:>10.2f} {summary['server_us']:>13.0f}  "
            f"{summary['runs']}{errors}",
            flush=True,
        )

    print(
        "\nratios: median over rounds of each round's throughput ratio; p99 medians; "
        "theirs/ours of the median server CPU per request"
    )
    lines = ratio_lines(processes)
    if args.compare_root is not None:
        lines += [
            (
                label,
                label.replace("modelfleet,", "modelfleet@compare,", 1),
                f"{label} vs the compare checkout",
            )
            for label in results
            if label.startswith("modelfleet,")
        ]
    for ours, theirs, text in lines:
        if ours not in per_round or theirs not in per_round:
            continue
        ratios = [
            a["throughput"] / b["throughput"] for a, b in zip(per_round[ours], per_round[theirs], strict=True)
        ]
        a, b = results[ours], results[theirs]
        print(
            f"{text:<58} {statistics.median(ratios):.2f}x throughput "
            f"({', '.join(f'{r:.2f}' for r in ratios)}), p99 {a['p99_ms']:.1f} vs {b['p99_ms']:.1f} ms, "
            f"{b['server_us'] / a['server_us']:.2f}x by CPU per request"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
