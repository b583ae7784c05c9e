"""Fleet convergence: N real agents in one process against the floor of N bare clients.

What is timed: from publishing a new signed deployment version (retained) until the last of N
devices has published a report that says it applied that version. The agents are
`simulator.Fleet` devices: the real `edge_agent.Agent` (intake, signature check, selection, plan,
status book, state file, report) with the simulator's module runtime (no processes, no
downloads). The floor, measured in the same process and the same run against the same broker:
N bare clients of the same transport that, on the deployment message, publish a minimal report
saying "applied" without parsing, verifying or persisting anything. Both sides are watched by
the same observer code, so the ratio is the agent's own cost per round trip.

    python bench/fleet.py                        # 200 and 1000 devices, 3 runs each, own Mosquitto
    python bench/fleet.py --devices 1000 --runs 5 --hub memory
    python bench/fleet.py --hub mqtt://127.0.0.1:1883 --profile

Each run publishes the next version to the same fleets (floor, then agents), so run 1 is a first
start of the module and later runs are updates. Printed per N: median seconds of each, the ratio,
the longest the event loop was held during the agents' runs, CPU seconds, resident memory per
agent (RSS growth while starting the fleet, divided by N), and with --profile where the agents'
time goes (cProfile over one extra run).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import json
import os
import pstats
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey  # noqa: E402

from modules.deployment import DeploymentDocument, sign_document  # noqa: E402
from modules.mqtt import MqttSettings, MqttTransport  # noqa: E402
from modules.signing import public_key_pem  # noqa: E402
from modules.topics import FleetTopics  # noqa: E402
from modules.transport import Transport  # noqa: E402
from simulator import Fleet, MemoryBroker, MemoryTransport  # noqa: E402

DEPLOYMENT = "bench"
IDLE_S = 3.0


def rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_mosquitto(folder: Path) -> tuple[subprocess.Popen[bytes], str]:
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    port = free_port()
    config = folder / "mosquitto.conf"
    config.write_text(
        f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
        "max_queued_messages 1000000\nlog_dest stderr\nlog_type error\n"
    )
    proc = subprocess.Popen([binary, "-c", str(config)], stderr=subprocess.DEVNULL)
    for _ in range(200):
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return proc, f"mqtt://127.0.0.1:{port}"
        time.sleep(0.05)
    proc.kill()
    raise SystemExit("mosquitto did not start")


def document(fleet: str, version: int) -> DeploymentDocument:
    digest = "sha256:" + f"{version:064x}"
    module = {
        "type": "modelfleet",
        "status": "running",
        "restartPolicy": "always",
        "settings": {"module": "modules/bench", "digest": digest, "port": 7000},
    }
    return DeploymentDocument.model_validate(
        {
            "fleet": fleet,
            "name": DEPLOYMENT,
            "version": version,
            "targetCondition": "*",
            "createdAt": "2025-01-01T00:00:00Z",
            "content": {
                "modulesContent": {
                    "$edgeAgent": {"properties.desired": {"schemaVersion": "1.1", "modules": {"m": module}}}
                }
            },
        }
    )


def wire(doc: DeploymentDocument, key: Ed25519PrivateKey) -> bytes:
    return json.dumps(sign_document(doc, key).to_json_dict(), separators=(",", ":")).encode()


class Transports:
    """Makes clients of the chosen control plane: the in-memory broker or a real one."""

    def __init__(self, hub: str, broker: MemoryBroker | None) -> None:
        self.hub = hub
        self.broker = broker

    def make(self, client_id: str) -> Transport:
        if self.broker is not None:
            return MemoryTransport(self.broker, client_id)
        return MqttTransport(MqttSettings(url=self.hub, client_id=client_id), queue_size=1_000_000)


class Observer:
    """Counts devices whose report says `applied` at a version: the same code for both sides."""

    def __init__(self, transports: Transports, fleet: str) -> None:
        self.topics = FleetTopics(fleet)
        self.transport = transports.make(f"bench-observer-{fleet}-{os.urandom(2).hex()}")
        self.transport.subscribe(self.topics.all_reported)
        self.applied: dict[str, int] = {}  # device -> highest version reported applied
        self.target: tuple[int, int] | None = None  # (version, count)
        self.done = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run())
        await self.transport.start(connect_timeout=60)

    async def _run(self) -> None:
        async for message in self.transport.messages():
            parsed = self.topics.parse_device_topic(message.topic)
            if parsed is None or not message.payload:
                continue
            seen = json.loads(message.payload).get("deployments", {}).get(DEPLOYMENT)
            if seen and seen.get("outcome") == "applied":
                self.applied[parsed[0]] = max(self.applied.get(parsed[0], 0), int(seen["version"]))
                self._check()

    def _check(self) -> None:
        if self.target is not None:
            version, count = self.target
            if sum(v >= version for v in self.applied.values()) >= count:
                self.done.set()

    async def until(self, version: int, count: int, timeout: float) -> None:
        self.target = (version, count)
        self.done.clear()
        self._check()
        await asyncio.wait_for(self.done.wait(), timeout)

    async def stop(self) -> None:
        await self.transport.stop()
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)


class FloorFleet:
    """N bare clients: on a deployment, publish a minimal retained "applied" report."""

    def __init__(self, transports: Transports, fleet: str, size: int) -> None:
        self.topics = FleetTopics(fleet)
        self.clients = [transports.make(f"bench-floor-{fleet}-{i}") for i in range(size)]
        self.tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        for i, client in enumerate(self.clients):
            client.subscribe(self.topics.all_deployments)
            self.tasks.append(asyncio.create_task(self._answer(client, f"floor-{i:05d}")))
        for at in range(0, len(self.clients), 200):
            await asyncio.gather(*(c.start(connect_timeout=60) for c in self.clients[at : at + 200]))

    async def _answer(self, client: Transport, device_id: str) -> None:
        topic = self.topics.reported(device_id)
        async for message in client.messages():
            if not message.payload:
                continue
            # the version sits in the signed document; a bare client reads only that field
            version = json.loads(message.payload)["version"]
            body = {
                "device_id": device_id,
                "deployments": {DEPLOYMENT: {"version": version, "outcome": "applied"}},
            }
            await client.publish(topic, json.dumps(body).encode(), retain=True)

    async def stop(self) -> None:
        for at in range(0, len(self.clients), 200):
            await asyncio.gather(*(c.stop() for c in self.clients[at : at + 200]))
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


class LoopLag:
    """The longest the event loop was held while this runs (a 5 ms ticker arriving late)."""

    def __init__(self) -> None:
        self.worst = 0.0
        self._task: asyncio.Task[None] | None = None

    async def _tick(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            before = loop.time()
            await asyncio.sleep(0.005)
            self.worst = max(self.worst, loop.time() - before - 0.005)

    def __enter__(self) -> LoopLag:
        self._task = asyncio.get_running_loop().create_task(self._tick())
        return self

    def __exit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()


async def timed_round(
    publish: Callable[[], Any], observer: Observer, version: int, count: int, timeout: float
) -> float:
    began = time.perf_counter()
    await publish()
    await observer.until(version, count, timeout)
    return time.perf_counter() - began


# label -> (file the function is in, function name, only when called from a file ending so)
PROFILE_BUCKETS: dict[str, tuple[str, str, str | None]] = {
    "state snapshots on the loop (StateFile.snapshot)": ("_state.py", "snapshot", None),
    "stored documents (Agent._documents)": ("_agent.py", "_documents", None),
    "intake (Intake.evaluate)": ("_intake.py", "evaluate", None),
    "  of which parse + verify + validate, once per process": ("_intake.py", "_check_now", None),
    "selection (select_deployments)": ("_selection.py", "select_deployments", None),
    "report built (Agent.reported_state)": ("_agent.py", "reported_state", None),
    "device facts per report (device_info)": ("_device_info.py", "device_info", None),
    "reconcile pass (Agent.reconcile, all of it)": ("_agent.py", "reconcile", None),
}


def profile_report(profiler: cProfile.Profile, wall: float, size: int) -> list[str]:
    stats = pstats.Stats(profiler)
    rows = []
    for label, (file_end, function, caller_file) in PROFILE_BUCKETS.items():
        calls = 0
        cumulative = 0.0
        for (filename, _line, name), entry in stats.stats.items():  # type: ignore[attr-defined]
            if not (filename.endswith(file_end) and name == function):
                continue
            if caller_file is None:
                calls += entry[1]
                cumulative += entry[3]
                continue
            for (caller, _cl, _cn), (_cc, nc, _tt, ct) in entry[4].items():
                if caller.endswith(caller_file):
                    calls += nc
                    cumulative += ct
        rows.append(
            f"    {label:<52} {cumulative:6.2f} s ({cumulative / wall:4.0%} of the run), "
            f"{calls / size:4.1f} calls per agent, {cumulative / max(calls, 1) * 1000:6.2f} ms per call"
        )
    return rows


def probe_cost() -> float:
    """What the real executor's provider probe costs, once per process (the agents of one process
    share its answer): a fresh interpreter importing onnxruntime (the simulator's runtime answers
    from its profile instead)."""
    code = "import json, onnxruntime as o; print(json.dumps(o.get_available_providers()))"
    began = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], capture_output=True, check=False, timeout=60)
    return time.perf_counter() - began


async def bench(
    size: int, runs: int, hub: str, profile: bool, timeout: float, no_state_writes: bool
) -> dict[str, Any]:
    broker = MemoryBroker() if hub == "memory" else None
    transports = Transports(hub, broker)
    key = Ed25519PrivateKey.generate()
    work = Path(tempfile.mkdtemp(prefix="modelfleet-bench-fleet-"))
    trust = work / "publisher.pem"
    trust.write_text(public_key_pem(key))
    tag = os.urandom(2).hex()
    floor_name, agents_name = f"floor{tag}", f"agents{tag}"

    floor = FloorFleet(transports, floor_name, size)
    floor_observer = Observer(transports, floor_name)
    await floor_observer.start()
    await floor.start()
    publisher = transports.make(f"bench-publisher-{tag}")
    await publisher.start(connect_timeout=60)

    agents_observer = Observer(transports, agents_name)
    await agents_observer.start()
    gc.collect()
    rss_before = rss_bytes()
    tasks_before = len(asyncio.all_tasks())
    started = time.perf_counter()
    fleet = Fleet(
        size,
        trust=[trust],
        hub=hub,
        fleet=agents_name,
        root=work / "fleet",
        heartbeat_s=3600,
        links=False,
        broker=broker,
        connect_timeout_s=timeout,
    )
    await fleet.start()
    start_seconds = time.perf_counter() - started
    gc.collect()
    rss_per_agent = (rss_bytes() - rss_before) / size
    tasks_per_agent = (len(asyncio.all_tasks()) - tasks_before) / size
    if no_state_writes:
        for device in fleet.devices:
            assert device.agent is not None
            device.agent.state_file.write = lambda _generation, _data: True  # type: ignore[method-assign]

    def state_writes() -> int:
        return sum(d.agent.state_file.writes for d in fleet.devices if d.agent is not None)

    floor_times: list[float] = []
    agent_times: list[float] = []
    lag = 0.0
    cpu_agents = 0.0
    writes_before = state_writes()
    try:
        for run in range(runs):
            version = run + 1
            floor_payload = wire(document(floor_name, version), key)
            floor_times.append(
                await timed_round(
                    lambda p=floor_payload: publisher.publish(
                        FleetTopics(floor_name).deployment(DEPLOYMENT), p, retain=True
                    ),
                    floor_observer,
                    version,
                    size,
                    timeout,
                )
            )
            agents_payload = wire(document(agents_name, version), key)
            cpu_before = time.process_time()
            with LoopLag() as ticker:
                agent_times.append(
                    await timed_round(
                        lambda p=agents_payload: publisher.publish(
                            fleet.topics.deployment(DEPLOYMENT), p, retain=True
                        ),
                        agents_observer,
                        version,
                        size,
                        timeout,
                    )
                )
            cpu_agents += time.process_time() - cpu_before
            lag = max(lag, ticker.worst)
            print(
                f"  N={size} run {run + 1}/{runs}: "
                f"floor {floor_times[-1]:.3f} s, agents {agent_times[-1]:.3f} s",
                file=sys.stderr,
                flush=True,
            )
        writes_per_agent_run = (state_writes() - writes_before) / runs / size
        profile_rows: list[str] = []
        if profile:
            version = runs + 1
            payload = wire(document(agents_name, version), key)
            profiler = cProfile.Profile()
            profiler.enable()
            wall = await timed_round(
                lambda: publisher.publish(fleet.topics.deployment(DEPLOYMENT), payload, retain=True),
                agents_observer,
                version,
                size,
                timeout,
            )
            profiler.disable()
            profile_rows = [f"  profile of one more agents' run ({wall:.2f} s under cProfile):"]
            profile_rows += profile_report(profiler, wall, size)
        idle_cpu = time.process_time()
        await asyncio.sleep(IDLE_S)
        idle_cpu_per_agent = (time.process_time() - idle_cpu) / IDLE_S / size
        state_sizes = [
            (d.config.data_dir / "state.json").stat().st_size
            for d in fleet.devices[:50]
            if d.agent is not None
        ]
    finally:
        await fleet.stop()
        await agents_observer.stop()
        await publisher.stop()
        await floor.stop()
        await floor_observer.stop()
        shutil.rmtree(work, ignore_errors=True)
    floor_median = statistics.median(floor_times)
    agents_median = statistics.median(agent_times)
    return {
        "devices": size,
        "runs": runs,
        "floor_s": floor_times,
        "agents_s": agent_times,
        "floor_median_s": floor_median,
        "agents_median_s": agents_median,
        "ratio": agents_median / floor_median if floor_median else float("inf"),
        "start_s": start_seconds,
        "rss_per_agent_kib": rss_per_agent / 1024,
        "worst_loop_hold_ms": lag * 1000,
        "cpu_s_per_agents_run": cpu_agents / runs,
        "tasks_per_agent": tasks_per_agent,
        "idle_cpu_ms_per_agent_s": idle_cpu_per_agent * 1000,
        "state_file_bytes": statistics.median(state_sizes) if state_sizes else 0,
        "state_writes_per_agent_run": writes_per_agent_run,
        "profile": profile_rows,
    }


async def main_async(args: argparse.Namespace) -> int:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    mosquitto = None
    hub = args.hub
    if hub is None:
        folder = Path(tempfile.mkdtemp(prefix="modelfleet-bench-mosquitto-"))
        mosquitto, hub = start_mosquitto(folder)
    try:
        what_if = "  WHAT-IF: state file writes disabled" if args.what_if_no_state_writes else ""
        print(f"control plane: {hub}; runs per size: {args.runs}{what_if}", flush=True)
        for size in args.devices:
            result = await bench(
                size, args.runs, hub, args.profile, args.timeout, args.what_if_no_state_writes
            )
            print(
                f"N={size:>6}  floor median {result['floor_median_s']:.3f} s  "
                f"agents median {result['agents_median_s']:.3f} s  ratio {result['ratio']:.1f}x  "
                f"(runs: floor {', '.join(f'{t:.3f}' for t in result['floor_s'])}; "
                f"agents {', '.join(f'{t:.3f}' for t in result['agents_s'])})"
            )
            print(
                f"          start {result['start_s']:.2f} s  "
                f"RSS {result['rss_per_agent_kib']:.0f} KiB/agent  "
                f"loop held up to {result['worst_loop_hold_ms']:.0f} ms  "
                f"CPU {result['cpu_s_per_agents_run']:.2f} s per agents' run  "
                f"state.json {result['state_file_bytes']:.0f} B, "
                f"written {result['state_writes_per_agent_run']:.1f}x per agent and run (off the loop)",
                flush=True,
            )
            print(
                f"          {result['tasks_per_agent']:.1f} asyncio tasks per agent  "
                f"idle CPU {result['idle_cpu_ms_per_agent_s']:.3f} ms per agent per second",
                flush=True,
            )
            for row in result["profile"]:
                print(row, flush=True)
        if args.probe:
            probes = [probe_cost() for _ in range(3)]
            print(
                f"provider probe of the real executor (fresh interpreter importing onnxruntime): "
                f"median {statistics.median(probes):.2f} s, once per process (3 probes)"
            )
    finally:
        if mosquitto is not None:
            mosquitto.terminate()
            mosquitto.wait(10)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--devices", type=int, nargs="+", default=[200, 1000])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--hub", help="'memory' or mqtt://host:port (default: a Mosquitto of its own)")
    parser.add_argument("--profile", action="store_true", help="one more run under cProfile, by agent part")
    parser.add_argument("--probe", action="store_true", help="also time the real runtime's provider probe")
    parser.add_argument("--timeout", type=float, default=300.0)
    parser.add_argument(
        "--what-if-no-state-writes",
        action="store_true",
        help="an experiment, not the agent: each agent's state file writes replaced by nothing "
        "(what the disk work still costs)",
    )
    args = parser.parse_args()
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    sys.exit(main())
