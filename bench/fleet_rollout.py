"""A fleet-scale rollout: N simulated devices applied and healthy, against N bare clients' floor.

What is timed: from publishing a new signed deployment version (retained) until every one of N
devices has a retained report saying it applied that version **and** that the deployment's module
runs healthy with the new digest. The devices are `simulator.Fleet` devices, the real
`edge_agent.Agent` with the simulator's module runtime, connected straight to the broker (no
relays). The floor, in the same process and run, against the same broker: N bare MQTT clients
that, on the deployment message, read only its version and publish a minimal report with the
module running; nothing parsed, verified, planned or persisted. The same observer code judges both.

The two fleets are not up together: the floor runs its rounds and disconnects, then the agents
start and run theirs, so 10,000 devices need 10,000 sockets at a time, not 20,000.

    python bench/fleet_rollout.py --devices 1000                         # own Mosquitto
    python bench/fleet_rollout.py --devices 1000 10000 --runs 3 --hub mqtt://127.0.0.1:1883

Printed per N: each run and the medians, the ratio, the fleet's start time, peak RSS of the
process (total, and per device above what it held before the agents started), CPU seconds per
agents' round and for the whole agents' phase, the longest the event loop was held, and what
`modelfleet status --json` (run as a separate process against the live fleet) lists.
A broker given with --hub must let a client queue N messages (`max_queued_messages`, docs/hub.md).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import cProfile
import gc
import json
import logging
import os
import pstats
import resource
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fleet import DEPLOYMENT, LoopLag, Transports, document, rss_bytes, start_mosquitto, wire

from modules.signing import public_key_pem
from modules.topics import FleetTopics
from modules.transport import Transport
from simulator import Fleet, MemoryBroker

_BATCH = 200
ROOT = str(Path(__file__).resolve().parents[1])


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def digest_of(version: int) -> str:
    return document("x", version).content.modules["m"].settings.digest  # type: ignore[union-attr]


class HealthyObserver:
    """Counts devices whose report says the deployment is applied at a version and its module is
    running healthy with that version's digest: the same judgement for the floor and the agents."""

    def __init__(self, transports: Transports, fleet: str) -> None:
        self.topics = FleetTopics(fleet)
        self.transport = transports.make(f"bench-watch-{fleet}-{os.urandom(2).hex()}")
        self.transport.subscribe(self.topics.all_reported)
        self.healthy: dict[str, int] = {}  # device -> highest version seen applied and healthy
        self.target: tuple[int, int] | None = None
        self._reached = 0  # devices at or above the target's version: kept, not recounted per message
        self.messages = 0
        self.bytes = 0
        self.done = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run())
        await self.transport.start(connect_timeout=120)

    async def _run(self) -> None:
        async for message in self.transport.messages():
            self.messages += 1
            self.bytes += len(message.payload)
            parsed = self.topics.parse_device_topic(message.topic)
            if parsed is None or not message.payload:
                continue
            report = json.loads(message.payload)
            seen = report.get("deployments", {}).get(DEPLOYMENT)
            if not seen or seen.get("outcome") != "applied":
                continue
            version = int(seen["version"])
            digest = digest_of(version)
            modules = [m for m in report.get("modules", {}).values() if m.get("deployment") == DEPLOYMENT]
            if modules and all(
                m.get("status") == "running" and m.get("health") != "unhealthy" and m.get("digest") == digest
                for m in modules
            ):
                before = self.healthy.get(parsed[0], 0)
                if version > before:
                    self.healthy[parsed[0]] = version
                    if self.target is not None and before < self.target[0] <= version:
                        self._reached += 1
                        self._check()

    def _check(self) -> None:
        if self.target is not None and self._reached >= self.target[1]:
            self.done.set()

    async def until(self, version: int, count: int, timeout: float) -> None:
        self.target = (version, count)
        self._reached = sum(v >= version for v in self.healthy.values())
        self.done.clear()
        self._check()
        await asyncio.wait_for(self.done.wait(), timeout)

    async def stop(self) -> None:
        await self.transport.stop()
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)


class BareClients:
    """N clients doing only the round trip: deployment in, a minimal healthy report out."""

    def __init__(self, transports: Transports, fleet: str, size: int) -> None:
        self.topics = FleetTopics(fleet)
        self.clients = [transports.make(f"bench-bare-{fleet}-{i}") for i in range(size)]
        self.tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        for i, client in enumerate(self.clients):
            client.subscribe(self.topics.all_deployments)
            self.tasks.append(asyncio.create_task(self._answer(client, f"bare-{i:05d}")))
        for at in range(0, len(self.clients), _BATCH):
            await asyncio.gather(*(c.start(connect_timeout=120) for c in self.clients[at : at + _BATCH]))

    async def _answer(self, client: Transport, device_id: str) -> None:
        topic = self.topics.reported(device_id)
        async for message in client.messages():
            if not message.payload:
                continue
            version = json.loads(message.payload)["version"]
            module = {"deployment": DEPLOYMENT, "status": "running", "digest": digest_of(version)}
            body = {
                "device_id": device_id,
                "deployments": {DEPLOYMENT: {"version": version, "outcome": "applied"}},
                "modules": {"m": module},
            }
            await client.publish(topic, json.dumps(body).encode(), retain=True)

    async def stop(self) -> None:
        for at in range(0, len(self.clients), _BATCH):
            await asyncio.gather(*(c.stop() for c in self.clients[at : at + _BATCH]))
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


class GcPauses:
    """The collector's pauses: with a heap of thousands of agents, one full collection is a
    stall of its own, whatever the agents do."""

    def __init__(self) -> None:
        self.pauses: list[tuple[int, float]] = []
        self._began = 0.0

    def _callback(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._began = time.perf_counter()
        else:
            self.pauses.append((info["generation"], time.perf_counter() - self._began))

    def __enter__(self) -> GcPauses:
        gc.callbacks.append(self._callback)
        return self

    def __exit__(self, *exc: object) -> None:
        gc.callbacks.remove(self._callback)

    def worst(self) -> float:
        return max((p for _g, p in self.pauses), default=0.0)


class StallSampler:
    """Where the loop is while it is held: a thread samples the loop thread's stack whenever the
    loop's own ticker is late by more than `threshold_s`, and counts the innermost frames of our
    code. A profile says what costs in total; this says what holds the loop in one go."""

    def __init__(self, threshold_s: float) -> None:
        self.threshold_s = threshold_s
        self.samples: collections.Counter[str] = collections.Counter()
        self._beat = time.monotonic()
        self._loop_thread = threading.get_ident()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._task: asyncio.Task[None] | None = None

    async def _tick(self) -> None:
        while True:
            self._beat = time.monotonic()
            await asyncio.sleep(0.005)

    def _watch(self) -> None:
        while not self._stop.wait(0.02):
            if time.monotonic() - self._beat < self.threshold_s:
                continue
            frame = sys._current_frames().get(self._loop_thread)
            ours = []
            while frame is not None and len(ours) < 4:
                name = frame.f_code.co_filename
                if name.startswith(ROOT) and "site-packages" not in name:
                    ours.append(f"{Path(name).name}:{frame.f_lineno} {frame.f_code.co_name}")
                frame = frame.f_back
            self.samples[" < ".join(ours) or "(outside our code)"] += 1

    def __enter__(self) -> StallSampler:
        self._task = asyncio.get_running_loop().create_task(self._tick())
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._task is not None:
            self._task.cancel()

    def report(self) -> list[str]:
        total = sum(self.samples.values())
        return (
            [f"    {n / total:5.0%}  {where}" for where, n in self.samples.most_common(15)] if total else []
        )


async def rounds(
    publisher: Transport,
    topic: str,
    fleet: str,
    observer: HealthyObserver,
    size: int,
    runs: int,
    key: Ed25519PrivateKey,
    timeout: float,
    label: str,
    first: int = 1,
) -> list[float]:
    times = []
    for run in range(runs):
        version = first + run
        payload = wire(document(fleet, version), key)
        began = time.perf_counter()
        await publisher.publish(topic, payload, retain=True)
        await observer.until(version, size, timeout)
        times.append(time.perf_counter() - began)
        print(f"  N={size} {label} run {version}/{runs}: {times[-1]:.3f} s", file=sys.stderr, flush=True)
    return times


async def status_sees(work: Path, hub: str, fleet: str, size: int, timeout: float) -> dict[str, Any]:
    """`modelfleet status --json` as a person runs it, in its own process, against the live fleet:
    how many of the devices it lists, how many with the deployment applied and its module healthy,
    how long it took, and whether it said the broker cut what it delivered."""
    from publisher import Workspace

    ws = Workspace.create(work / "workspace", registry="http://127.0.0.1:9", hub=hub, fleet=fleet)
    began = time.perf_counter()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "modules.cli", "status", "--json", "--config", str(ws.config_path),
        env={**os.environ, "PYTHONPATH": ROOT},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    took = time.perf_counter() - began
    if proc.returncode != 0:
        raise SystemExit(f"modelfleet status failed ({proc.returncode}): {err.decode()[-2000:]}")
    status = json.loads(out)
    healthy = 0
    for device in status["devices"]:
        applied = (device["deployments"].get(DEPLOYMENT) or {}).get("outcome") == "applied"
        modules = [m for m in device["modules"].values() if m["deployment"] == DEPLOYMENT]
        # the same judgement as the observer's: running, and not unhealthy
        if (
            applied
            and modules
            and all(m["status"] == "running" and m["health"] != "unhealthy" for m in modules)
        ):
            healthy += 1
    return {
        "status_devices": len(status["devices"]),
        "status_applied_healthy": healthy,
        "status_s": took,
        "status_incomplete": status["incomplete"],
        "expected": size,
    }


async def bench(
    size: int, runs: int, hub: str, timeout: float, profile: bool = False, stall_s: float = 0.0
) -> dict[str, Any]:
    broker = MemoryBroker() if hub == "memory" else None
    transports = Transports(hub, broker)
    key = Ed25519PrivateKey.generate()
    work = Path(tempfile.mkdtemp(prefix="modelfleet-bench-rollout-"))
    (work / "publisher.pem").write_text(public_key_pem(key))
    tag = os.urandom(2).hex()
    bare_name, agents_name = f"bare{tag}", f"agents{tag}"
    publisher = transports.make(f"bench-publisher-{tag}")
    await publisher.start(connect_timeout=60)
    try:
        bare = BareClients(transports, bare_name, size)
        bare_watch = HealthyObserver(transports, bare_name)
        await bare_watch.start()
        await bare.start()
        try:
            topic = FleetTopics(bare_name).deployment(DEPLOYMENT)
            floor = await rounds(publisher, topic, bare_name, bare_watch, size, runs, key, timeout, "bare")
        finally:
            await bare.stop()
            await bare_watch.stop()
            await publisher.publish(FleetTopics(bare_name).deployment(DEPLOYMENT), b"", retain=True)
        del bare
        gc.collect()

        watch = HealthyObserver(transports, agents_name)
        await watch.start()
        rss_before = rss_bytes()
        cpu_phase = time.process_time()
        began = time.perf_counter()
        fleet = Fleet(
            size,
            trust=[work / "publisher.pem"],
            hub=hub,
            fleet=agents_name,
            root=work / "fleet",
            heartbeat_s=3600,
            links=False,
            broker=broker,
            connect_timeout_s=timeout,
        )
        with LoopLag() as start_lag:
            await fleet.start()
        start_s = time.perf_counter() - began
        try:
            cpu_rounds = time.process_time()
            messages_before = watch.messages
            sampler = StallSampler(stall_s) if stall_s else contextlib.nullcontext()
            with LoopLag() as lag, sampler, GcPauses() as collections_:
                topic = fleet.topics.deployment(DEPLOYMENT)
                agents = await rounds(
                    publisher, topic, agents_name, watch, size, runs, key, timeout, "agents"
                )
            if profile:
                profiler = cProfile.Profile()
                profiler.enable()
                await rounds(
                    publisher, topic, agents_name, watch, size, 1, key, timeout, "profiled", runs + 1
                )
                profiler.disable()
                stats = pstats.Stats(profiler, stream=sys.stderr)
                stats.sort_stats("tottime").print_stats(25)
                stats.sort_stats("cumulative").print_stats(40)
            cpu_round = (time.process_time() - cpu_rounds) / runs
            gc_worst = collections_.worst()
            gc_total = sum(p for _g, p in collections_.pauses)
            if isinstance(sampler, StallSampler):
                print("  where the loop was while held (share of samples):", file=sys.stderr)
                print("\n".join(sampler.report()), file=sys.stderr, flush=True)
            reports_per_device_run = (watch.messages - messages_before) / runs / size
            seen = await status_sees(work, hub, agents_name, size, timeout)
        finally:
            await fleet.stop()
            await watch.stop()
            await publisher.publish(topic, b"", retain=True)
        cpu_total = time.process_time() - cpu_phase
    finally:
        await publisher.stop()
        shutil.rmtree(work, ignore_errors=True)
    peak = peak_rss_bytes()
    return {
        "devices": size,
        "runs": runs,
        "floor_s": floor,
        "agents_s": agents,
        "floor_median_s": statistics.median(floor),
        "agents_median_s": statistics.median(agents),
        "ratio": statistics.median(agents) / statistics.median(floor),
        "start_s": start_s,
        "peak_rss_mib": peak / 2**20,
        "peak_rss_per_device_kib": max(peak - rss_before, 0) / size / 1024,
        "cpu_s_per_round": cpu_round,
        "cpu_s_agents_phase": cpu_total,
        "loop_held_ms": lag.worst * 1000,
        "gc_worst_pause_ms": gc_worst * 1000,
        "gc_pauses_s": gc_total,
        "loop_held_during_start_ms": start_lag.worst * 1000,
        "reports_per_device_round": reports_per_device_run,
        **seen,
    }


async def main_async(args: argparse.Namespace) -> int:
    if args.slow_callbacks:
        # asyncio names every callback that held the loop longer than this (debug mode: slower)
        loop = asyncio.get_running_loop()
        loop.set_debug(True)
        loop.slow_callback_duration = args.slow_callbacks
        logging.basicConfig(level=logging.WARNING)
        logging.getLogger("modelfleet").setLevel(logging.ERROR)
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    mosquitto = None
    hub = args.hub
    if hub is None:
        folder = Path(tempfile.mkdtemp(prefix="modelfleet-bench-mosquitto-"))
        mosquitto, hub = start_mosquitto(folder)
    results = []
    try:
        print(f"control plane: {hub}; runs per size: {args.runs}", flush=True)
        for size in args.devices:
            r = await bench(size, args.runs, hub, args.timeout, args.profile, args.stalls or 0.0)
            results.append(r)
            print(
                f"N={size:>6}  bare clients median {r['floor_median_s']:.3f} s  "
                f"devices applied+healthy median {r['agents_median_s']:.3f} s  ratio {r['ratio']:.1f}x\n"
                f"          runs: bare {', '.join(f'{t:.3f}' for t in r['floor_s'])}; "
                f"devices {', '.join(f'{t:.3f}' for t in r['agents_s'])}\n"
                f"          fleet start {r['start_s']:.1f} s (loop held up to "
                f"{r['loop_held_during_start_ms']:.0f} ms)  peak RSS {r['peak_rss_mib']:.0f} MiB total, "
                f"{r['peak_rss_per_device_kib']:.0f} KiB per device\n"
                f"          CPU {r['cpu_s_per_round']:.2f} s per round, "
                f"{r['cpu_s_agents_phase']:.1f} s for the devices' whole phase  "
                f"loop held up to {r['loop_held_ms']:.0f} ms during rounds  "
                f"{r['reports_per_device_round']:.1f} reports per device and round\n"
                f"          garbage collector: {r['gc_pauses_s']:.2f} s of pauses in the rounds, "
                f"the longest {r['gc_worst_pause_ms']:.0f} ms\n"
                f"          `modelfleet status --json` listed {r['status_devices']} of {size} devices, "
                f"{r['status_applied_healthy']} applied and healthy, in {r['status_s']:.1f} s"
                + (
                    f"; it said the broker cut its delivery: {r['status_incomplete']}"
                    if r["status_incomplete"]
                    else ""
                ),
                flush=True,
            )
        if args.json:
            print(json.dumps(results, indent=1))
    finally:
        if mosquitto is not None:
            mosquitto.terminate()
            mosquitto.wait(10)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--devices", type=int, nargs="+", default=[1000])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--hub", help="'memory' or mqtt://host:port (default: a Mosquitto of its own)")
    parser.add_argument("--timeout", type=float, default=600.0)
    parser.add_argument("--profile", action="store_true", help="one more round under cProfile (stderr)")
    parser.add_argument(
        "--slow-callbacks", type=float, metavar="S", help="log each callback holding the loop over S seconds"
    )
    parser.add_argument(
        "--stalls", type=float, metavar="S", help="sample where the loop is whenever held over S seconds"
    )
    parser.add_argument("--json", action="store_true", help="also print the figures as JSON")
    return asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
