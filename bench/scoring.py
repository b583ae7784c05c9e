"""Scoring throughput: modelfleet's host against Azure ML's inference server, same run.

Both serve the same ONNX model (examples/models/cnn) with the same entry script
(bench/cnn_score.py); one load generator (ApacheBench `ab -k`, or an asyncio client in its own
process) drives each in turn at the same concurrency, warm-up and duration. modelfleet is also
measured as a zero-code ONNX host, with and without dynamic batching. Servers run one at a time
so they never compete for the CPU.

    python bench/scoring.py                     # 5 runs x 5 s per configuration
    python bench/scoring.py --runs 3 --seconds 3
    python bench/scoring.py --client python     # asyncio client instead of ApacheBench (ab)

The reference is azureml-inference-server-http 1.5.1, installed here into bench/.venvs/azureml
on first use (it pins Flask/gunicorn versions that must not meet the project's environment),
run with its defaults: WORKER_COUNT=1 (one gunicorn sync worker), WORKER_TIMEOUT=300, access log
to stdout (discarded here). Only AZUREML_LOG_LEVEL=WARNING is set, which spares it log lines.
modelfleet runs as `modelfleet serve` with its defaults (processes = CPUs, inference threads
shared out over them, the script's json.loads through the host's exact fast parser); the
"script json stdlib" row turns that parser off for the script, and the batching row turns on a
non-default setting; both are labelled so.
The client's own CPU use is printed per row ("client cpu", in cores) to show it is not the limit.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
VENV = BENCH / ".venvs" / "azureml"
AZUREML_VERSION = "1.5.1"
MODEL_DIR = ROOT / "examples" / "models" / "cnn"
SCRIPT = BENCH / "cnn_score.py"
CLIENT = "ab" if shutil.which("ab") else "python"


@dataclass
class Server:
    label: str
    argv: list[str]
    env: dict[str, str]
    concurrency: int


def ensure_azureml_venv() -> Path:
    python = VENV / "bin" / "python"
    marker = VENV / f".installed-{AZUREML_VERSION}"
    if marker.exists():
        return python
    VENV.parent.mkdir(parents=True, exist_ok=True)
    (VENV.parent / ".gitignore").write_text("*\n")
    print(f"installing azureml-inference-server-http=={AZUREML_VERSION} into {VENV} ...")
    subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    subprocess.run(
        [
            str(python),
            "-m",
            "pip",
            "install",
            "-q",
            f"azureml-inference-server-http=={AZUREML_VERSION}",
            "onnxruntime",
            "numpy",
        ],
        check=True,
    )
    marker.write_text("ok\n")
    return python


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


# ---------------------------------------------------------------- load generator (subprocess)


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


def run_ab(url: str, body_file: Path, concurrency: int, seconds: float) -> dict:
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
    before = os.times()
    out = subprocess.run(
        [*base, "-t", str(seconds), "-e", str(csv), url], check=True, capture_output=True, text=True
    ).stdout
    after = os.times()
    client_cpu = (after.children_user + after.children_system) - (
        before.children_user + before.children_system
    )
    fields = {}
    for line in out.splitlines():
        key, _, value = line.partition(":")
        fields[key.strip()] = value.strip()
    percentiles = {}
    for line in csv.read_text().splitlines()[1:]:
        percent, _, millis = line.partition(",")
        percentiles[int(float(percent))] = float(millis)
    failed = int(fields["Failed requests"].split()[0]) + int(fields.get("Non-2xx responses", "0").split()[0])
    return {
        "requests": int(fields["Complete requests"]),
        "errors": failed,
        "throughput": float(fields["Requests per second"].split()[0]),
        "p50_ms": percentiles[50],
        "p99_ms": percentiles[99],
        "client_cpu": client_cpu / seconds,
    }


def run_load(url: str, body_file: Path, concurrency: int, seconds: float) -> dict:
    if CLIENT == "ab":
        return run_ab(url, body_file, concurrency, seconds)
    result = subprocess.run(
        [sys.executable, __file__, "--load", url, str(body_file), str(concurrency), str(seconds)],
        check=True,
        capture_output=True,
        text=True,
    )
    return {"client_cpu": float("nan"), **json.loads(result.stdout)}


# ---------------------------------------------------------------- orchestration


def measure(server: Server, body_file: Path, runs: int, seconds: float) -> dict:
    port = free_port()
    argv = [part.replace("{port}", str(port)) for part in server.argv]
    process = subprocess.Popen(
        argv,
        cwd=ROOT,
        env={**os.environ, **server.env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}/score"
    try:
        wait_until_scoring(url, body_file.read_bytes(), process)
        results = [run_load(url, body_file, server.concurrency, seconds) for _ in range(runs)]
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    keys = ("throughput", "p50_ms", "p99_ms", "client_cpu")
    summary = {key: statistics.median(r[key] for r in results) for key in keys}
    summary["errors"] = sum(r["errors"] for r in results)
    summary["runs"] = [round(r["throughput"], 1) for r in results]
    return summary


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--load", nargs=4, help=argparse.SUPPRESS)
    parser.add_argument("--client", choices=["ab", "python"], default=CLIENT)
    args = parser.parse_args()
    globals()["CLIENT"] = args.client
    if args.load:
        url, body_file, concurrency, seconds = args.load
        result = asyncio.run(_load(url, Path(body_file).read_bytes(), int(concurrency), float(seconds), 1.0))
        print(json.dumps(result))
        return 0

    azureml_python = ensure_azureml_venv()
    body_file = BENCH / ".venvs" / "cnn-body.json"
    body_file.write_text((MODEL_DIR / "sample-input.json").read_text())
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
    entry = [*modelfleet, "--entry-script", str(SCRIPT)]
    servers = [
        Server("azureml 1.5.1, entry script, c=8", azmlinfsrv, quiet, 8),
        Server("modelfleet, entry script, c=8", entry, {}, 8),
        Server("modelfleet, entry script, 1 process, c=8", [*entry, "--processes", "1"], {}, 8),
        Server("modelfleet, entry script, script json stdlib, c=8", entry, stdlib_json, 8),
        Server("modelfleet, zero-code ONNX, c=8", modelfleet, {}, 8),
        Server("azureml 1.5.1, entry script, c=32", azmlinfsrv, quiet, 32),
        Server("modelfleet, entry script, c=32", entry, {}, 32),
        Server("modelfleet, zero-code ONNX, c=32", modelfleet, {}, 32),
        Server(
            "modelfleet, zero-code + batching 32/2ms, c=32",
            [*modelfleet, "--max-batch-size", "32", "--max-batch-wait-ms", "2"],
            {},
            32,
        ),
    ]
    print(
        f"CNN {MODEL_DIR.relative_to(ROOT)}, {os.cpu_count()} CPUs, "
        f"{args.runs} runs x {args.seconds:g} s each, load generator: {args.client}, medians\n"
    )
    print(f"modelfleet defaults here: {os.cpu_count()} processes (modelfleet serve --processes)")
    print(f"{'server':<52} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'client cpu':>10}  runs (req/s)")
    results: dict[str, dict] = {}
    for server in servers:
        summary = measure(server, body_file, args.runs, args.seconds)
        results[server.label] = summary
        errors = f"  errors={summary['errors']}" if summary["errors"] else ""
        print(
            f"{server.label:<52} {summary['throughput']:>8.1f} {summary['p50_ms']:>8.2f} "
            f"{summary['p99_ms']:>8.2f} {summary['client_cpu']:>10.2f}  {summary['runs']}{errors}",
            flush=True,
        )

    def ratio(ours: str, theirs: str) -> str:
        a, b = results[ours], results[theirs]
        return (
            f"{a['throughput'] / b['throughput']:.1f}x throughput, "
            f"p99 {a['p99_ms']:.1f} vs {b['p99_ms']:.1f} ms"
        )

    print()
    print("c=8  entry script   :", ratio("modelfleet, entry script, c=8", "azureml 1.5.1, entry script, c=8"))
    print(
        "c=8  zero-code      :", ratio("modelfleet, zero-code ONNX, c=8", "azureml 1.5.1, entry script, c=8")
    )
    print(
        "c=8  entry, 1 proc  :",
        ratio("modelfleet, entry script, 1 process, c=8", "azureml 1.5.1, entry script, c=8"),
    )
    print(
        "c=8  entry, stdlib json in the script:",
        ratio("modelfleet, entry script, script json stdlib, c=8", "azureml 1.5.1, entry script, c=8"),
    )
    print(
        "c=32 entry script   :", ratio("modelfleet, entry script, c=32", "azureml 1.5.1, entry script, c=32")
    )
    print(
        "c=32 zero-code      :",
        ratio("modelfleet, zero-code ONNX, c=32", "azureml 1.5.1, entry script, c=32"),
    )
    print(
        "c=32 batching       :",
        ratio("modelfleet, zero-code + batching 32/2ms, c=32", "azureml 1.5.1, entry script, c=32"),
    )
    print(
        "c=32 batching vs the same host without it:",
        ratio("modelfleet, zero-code + batching 32/2ms, c=32", "modelfleet, zero-code ONNX, c=32"),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
